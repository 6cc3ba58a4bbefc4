"""Which store and blob store a process uses, as its configuration says (--store, --blobs)."""

from __future__ import annotations

from server.blobs import BlobStore, LocalBlobStore
from server.config import Config
from server.store.base import Store


def build_store(config: Config) -> Store:
    """SQLite in the data directory, or MongoDB at the configured URI. Not opened yet."""
    if config.store == "sqlite":
        from server.store.sqlite import SQLiteStore

        return SQLiteStore(config.database_path)
    from server.store.mongo import MongoStore

    return MongoStore(config.store)


def build_blob_store(config: Config) -> BlobStore:
    """Local files in the data directory, or an S3 bucket. Not started yet."""
    if config.blobs == "local":
        return LocalBlobStore(config.uploads_dir)
    from server.s3blobs import S3BlobStore

    return S3BlobStore(config.blobs, endpoint_url=config.s3_endpoint_url, public_url=config.s3_public_url)


def store_name(config: Config) -> str:
    """Which database, in words; never the store URI's password."""
    if config.store == "sqlite":
        return f"SQLite {config.database_path.resolve()}"
    from server.store.mongo import MongoStore

    return f"MongoDB database {MongoStore(config.store).database_name!r}"


def describe(config: Config) -> str:
    """Where the data lives, for the start-up banner."""
    store = store_name(config)
    blobs = f"uploads in {config.uploads_dir.resolve()}" if config.blobs == "local" else f"uploads in {config.blobs}"
    return f"{store}, {blobs}"
