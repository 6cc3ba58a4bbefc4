"""Uploaded images in an S3 bucket (AWS, MinIO, R2, or any S3-compatible server) via aiobotocore.

Credentials and region come from the usual AWS_* variables (or the instance's role). The URL handed
to browsers stays /uploads/<key> on this server, which redirects to a fresh presigned GET; with a
public base URL (a CDN in front of the bucket) browsers are sent there instead.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from server.blobs import Blob, BlobStore, is_blob_key, new_key
from server.errors import Unavailable

log = logging.getLogger(__name__)

PRESIGNED_SECONDS = 3600
TIMEOUTS = {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 3, "mode": "standard"}}


class BlobsUnavailable(Unavailable):
    """The object store cannot be reached or refused the operation."""


def parse_s3_location(location: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix/")."""
    parts = urlsplit(location)
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class S3BlobStore(BlobStore):
    def __init__(self, location: str, *, endpoint_url: str | None = None,
                 public_url: str | None = None, url_prefix: str = "/uploads/") -> None:
        self.bucket, self.prefix = parse_s3_location(location)
        self.endpoint_url = endpoint_url
        self.public_url = public_url.rstrip("/") if public_url else None
        self.url_prefix = url_prefix
        self._exit_stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        session = get_session()
        self._client = await self._exit_stack.enter_async_context(session.create_client(
            # Signature version 4 for the presigned links too: botocore would sign them with the
            # old version 2 in us-east-1 (or with no region), which newer AWS buckets and R2 refuse.
            "s3", endpoint_url=self.endpoint_url, config=AioConfig(signature_version="s3v4", **TIMEOUTS)))

    async def close(self) -> None:
        await self._exit_stack.aclose()
        self._client = None

    async def check(self) -> None:
        async with self._call("check"):
            await self._client.head_bucket(Bucket=self.bucket)

    def _object(self, key: str) -> str:
        if not is_blob_key(key):
            raise ValueError("not a blob key")
        return self.prefix + key

    @contextlib.asynccontextmanager
    async def _call(self, what: str):  # type: ignore[no-untyped-def]
        if self._client is None:
            raise BlobsUnavailable("The image store is not connected.")
        try:
            yield
        except (BotoCoreError, ClientError, OSError) as exc:
            log.error("s3 %s failed: %s", what, exc)
            raise BlobsUnavailable("The image store is unavailable; please try again.") from exc

    async def put(self, data: bytes, extension: str, content_type: str) -> str:
        key = new_key(extension)
        async with self._call("put"):
            await self._client.put_object(
                Bucket=self.bucket, Key=self._object(key), Body=data, ContentType=content_type,
                CacheControl="public, max-age=31536000, immutable")
        return key

    async def open(self, key: str) -> Blob | None:
        async with self._call("get"):
            try:
                response = await self._client.get_object(Bucket=self.bucket, Key=self._object(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            async with response["Body"] as body:
                data = await body.read()
        return Blob(data, response.get("ContentType") or "application/octet-stream")

    async def delete(self, key: str) -> None:
        async with self._call("delete"):
            await self._client.delete_object(Bucket=self.bucket, Key=self._object(key))

    def url_for(self, key: str, base_url: str) -> str:
        if self.public_url:  # a CDN serves the bucket: no detour through this server
            return f"{self.public_url}/{self._object(key)}"
        return f"{base_url.rstrip('/')}{self.url_prefix}{key}"

    async def redirect_for(self, key: str) -> str | None:
        if self.public_url:
            return f"{self.public_url}/{self._object(key)}"
        async with self._call("presign"):
            return await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._object(key)},
                ExpiresIn=PRESIGNED_SECONDS)
