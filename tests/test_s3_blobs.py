"""Uploaded images in S3: against moto's S3 server, through the blob store and through HTTP."""

from __future__ import annotations

import io
from typing import AsyncIterator, Iterator

import httpx
import pytest
import tornado.testing
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer
from PIL import Image

from server.blobs import Blob
from server.s3blobs import S3BlobStore
from tests.harness import Parley, session, start_parley
from tests.test_api_endpoints import png_bytes

BUCKET = "parley-uploads"
SID = session("s3")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
async def bucket(s3_endpoint, monkeypatch) -> str:
    """Credentials and region from the AWS_* variables, as in production; a fresh bucket."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    async with get_session().create_client("s3", endpoint_url=s3_endpoint) as client:
        try:
            await client.create_bucket(Bucket=BUCKET)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
    return BUCKET


@pytest.fixture
async def blobs(bucket, s3_endpoint) -> AsyncIterator[S3BlobStore]:
    store = S3BlobStore(f"s3://{bucket}/chat/images", endpoint_url=s3_endpoint)
    await store.start()
    yield store
    await store.close()


async def test_put_open_delete(blobs, s3_endpoint):
    key = await blobs.put(b"\x89PNG fake", "png", "image/png")
    assert await blobs.open(key) == Blob(b"\x89PNG fake", "image/png")
    async with get_session().create_client("s3", endpoint_url=s3_endpoint) as client:
        head = await client.head_object(Bucket=BUCKET, Key=f"chat/images/{key}")
        assert head["ContentType"] == "image/png"
    signed = await blobs.redirect_for(key)
    assert signed.startswith(f"{s3_endpoint}/{BUCKET}/chat/images/{key}?")
    # Signature version 4 even in us-east-1: newer AWS buckets and R2 refuse version 2's links.
    assert "X-Amz-Signature=" in signed and "AWSAccessKeyId" not in signed
    assert httpx.get(signed).content == b"\x89PNG fake"
    await blobs.delete(key)
    assert await blobs.open(key) is None
    await blobs.delete(key)  # already gone: fine


@pytest.fixture
async def parley_s3(tmp_path, bucket, s3_endpoint) -> AsyncIterator[Parley]:
    async for harness in start_parley(tmp_path, blobs=f"s3://{bucket}/uploads", s3_endpoint_url=s3_endpoint):
        yield harness


async def test_an_uploaded_image_lives_in_the_bucket_behind_a_stable_url(parley_s3, s3_endpoint):
    assert (await parley_s3.client.get("/readyz")).json()["images"] == "ok"
    jpeg = png_bytes((40, 30), fmt="JPEG")
    response = await parley_s3.client.post("/api/v1/chat/upload-image", data=parley_s3.ids(SID),
                                           files={"image": ("photo.jpg", jpeg, "image/jpeg")})
    assert response.status_code == 200
    url = response.json()["url"]
    assert url.startswith(parley_s3.base_url + "/uploads/")
    redirect = await parley_s3.client.get(url)
    assert redirect.status_code == 302
    signed = redirect.headers["location"]
    assert signed.startswith(f"{s3_endpoint}/{BUCKET}/uploads/")
    image = httpx.get(signed)
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (40, 30)
    assert (await parley_s3.client.get("/uploads/" + "x" * 24 + ".png")).status_code == 302  # no lookup
    history = (await parley_s3.get("history", **parley_s3.ids(SID))).json()["messages"]
    assert history[-1]["image_url"] == url


async def test_a_cdn_in_front_of_the_bucket(bucket, s3_endpoint):
    store = S3BlobStore(f"s3://{bucket}", endpoint_url=s3_endpoint, public_url="https://cdn.example.com/")
    await store.start()
    try:
        key = await store.put(b"gif", "gif", "image/gif")
        assert store.url_for(key, "https://chat.example.com") == f"https://cdn.example.com/{key}"
        assert await store.redirect_for(key) == f"https://cdn.example.com/{key}"
        assert await store.open(key) == Blob(b"gif", "image/gif")
    finally:
        await store.close()


async def test_a_missing_bucket_is_a_503_and_not_ready(tmp_path, bucket, s3_endpoint):
    async for parley in start_parley(tmp_path, blobs="s3://no-such-bucket", s3_endpoint_url=s3_endpoint):
        response = await parley.client.post("/api/v1/chat/upload-image", data=parley.ids(SID),
                                            files={"image": ("a.png", png_bytes(), "image/png")})
        assert response.status_code == 503 and response.json()["code"] == "unavailable"
        # Said before any upload fails: the process is not ready.
        ready = await parley.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["images"] == "unreachable"
