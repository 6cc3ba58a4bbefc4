"""Where uploaded images live: local disk by default; S3 slots in behind the same interface."""

from __future__ import annotations

import abc
import asyncio
import os
import secrets
from pathlib import Path


class BlobStore(abc.ABC):
    @abc.abstractmethod
    async def put(self, data: bytes, extension: str, content_type: str) -> str:
        """Store `data` under a new random key and return the key."""

    @abc.abstractmethod
    def url_for(self, key: str, base_url: str) -> str:
        """The absolute URL a browser fetches the blob from."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        return None


def new_key(extension: str) -> str:
    return f"{secrets.token_urlsafe(18)}.{extension}"


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
        partial.write_bytes(data)
        os.replace(partial, target)

    def url_for(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}{self.url_prefix}{key}"
