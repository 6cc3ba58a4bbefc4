"""Where uploaded images live: local disk by default, or an S3 bucket (server/s3blobs.py).

Whatever the backend, the URL handed out is this server's /uploads/<key>: it answers from local disk,
or redirects to a fresh signed URL of the bucket, so a stored message's image never goes stale.
"""

from __future__ import annotations

import abc
import asyncio
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

# What new_key makes: random URL-safe characters and an image extension. Anything else is not a key.
BLOB_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}\.(png|jpg|gif|webp)$")
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}


@dataclass(frozen=True)
class Blob:
    data: bytes
    content_type: str


def is_blob_key(key: str) -> bool:
    return bool(BLOB_KEY_RE.match(key))


def new_key(extension: str) -> str:
    return f"{secrets.token_urlsafe(18)}.{extension}"


class BlobStore(abc.ABC):
    """Blobs under random keys. Every method takes only keys made by `put` (see is_blob_key)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect, when the backend needs to."""

    @abc.abstractmethod
    async def put(self, data: bytes, extension: str, content_type: str) -> str:
        """Store `data` under a new random key and return the key."""

    @abc.abstractmethod
    async def open(self, key: str) -> Blob | None:
        """The blob's bytes and content type; None when there is no such blob."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing blob is not an error."""

    @abc.abstractmethod
    def url_for(self, key: str, base_url: str) -> str:
        """The absolute URL handed to browsers. It never expires."""

    async def redirect_for(self, key: str) -> str | None:
        """Where /uploads/<key> sends the browser instead of answering itself; None: it answers
        with the bytes from `open`."""
        return None

    async def check(self) -> None:  # noqa: B027 - optional hook
        """Raise Unavailable when images cannot be stored now (a missing bucket, bad credentials).
        Files on the local disk are the readiness's disk check."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        return None


class LocalBlobStore(BlobStore):
    """Files under a directory, served by this server at /uploads/<key>."""

    def __init__(self, root: Path, *, url_prefix: str = "/uploads/") -> None:
        self.root = root
        self.url_prefix = url_prefix
        root.mkdir(parents=True, exist_ok=True)

    async def put(self, data: bytes, extension: str, content_type: str) -> str:
        key = new_key(extension)
        await asyncio.to_thread(self._write, key, data)
        return key

    def _write(self, key: str, data: bytes) -> None:
        # Write beside, then rename, so a reader never sees half a file.
        target = self.root / key
        partial = target.with_name(target.name + ".part")
        try:
            partial.write_bytes(data)
            os.replace(partial, target)
        except OSError:
            partial.unlink(missing_ok=True)  # a full disk leaves nothing behind
            raise

    def _path(self, key: str) -> Path:
        if not is_blob_key(key):  # no path of our choosing ever comes from a request
            raise ValueError("not a blob key")
        return self.root / key

    async def open(self, key: str) -> Blob | None:
        path = self._path(key)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        return Blob(data, CONTENT_TYPES[key.rsplit(".", 1)[1]])

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    def url_for(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}{self.url_prefix}{key}"
