"""Uploads that cannot exhaust memory or starve other visitors: checked before the body, spooled
to disk within the site's limit, a few at a time, decoded in turns, and a full disk is a 503."""

from __future__ import annotations

import asyncio
import errno
import io
import struct
import threading
import zlib

import pytest
from PIL import Image

from handlers.upload import UploadImageHandler
from server.uploads import FairTurns, open_spool_file
from tests.harness import session
from tests.waiting import eventually

SID = session("uploads")
UPLOAD = "/api/v1/chat/upload-image"


def jpeg_bytes(size=(40, 30), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height; the pixel data is a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def multipart_head(boundary: str = "b0undary") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()


async def raw_upload_start(parley, query: str, length: int, first: bytes, *, expect: bool = False):
    """Headers of an upload declaring `length` bytes, and only `first` of its body (with `expect`,
    `Expect: 100-continue`: the client waits for the server's word before sending its body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", parley.port)
    writer.write((f"POST {UPLOAD}?{query} HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Type: multipart/form-data; boundary=b0undary\r\n"
                  + ("Expect: 100-continue\r\n" if expect else "")
                  + f"Content-Length: {length}\r\n\r\n").encode() + first)
    await writer.drain()
    return reader, writer


def spooled(parley) -> list[str]:
    directory = parley.services.chat.uploads.directory
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def test_the_site_is_checked_before_the_body_is_read(parley):
    query = f"site_key=sk_{'z' * 30}&session_id={SID}"
    reader, writer = await raw_upload_start(parley, query, 10_000_000, b"", expect=True)
    response = await asyncio.wait_for(reader.read(), 10)  # answered with 10 MB still unsent
    writer.close()
    assert response.startswith(b"HTTP/1.1 404")  # no "100 Continue": the body is not wanted
    assert b'"code":"unknown_site"' in response


async def push_then_read(port: int, query: str, body: bytes, piece: int = 64 * 1024) -> bytes:
    """A client that sends its whole body, a piece at a time, and only then reads the answer (as
    most HTTP clients do); a connection reset on the way fails the test."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((f"POST {UPLOAD}?{query} HTTP/1.1\r\nHost: x\r\n"
                      "Content-Type: multipart/form-data; boundary=b0undary\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode())
        for start in range(0, len(body), piece):
            writer.write(body[start:start + piece])
            await writer.drain()
            await asyncio.sleep(0.001)
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


@pytest.mark.parametrize("refusal", ["unknown_site", "too_large"])
async def test_a_client_pushing_its_whole_body_reads_the_json_refusal_not_a_reset(parley, refusal):
    """The server answers, then reads and drops the refused body (within bounds), rather than
    closing on a client still sending it."""
    await parley.services.sites.update_settings(parley.site.id, {"upload_max_bytes": 100_000})
    site_key = parley.site_key if refusal == "too_large" else "sk_" + "z" * 30
    body = multipart_head() + b"\0" * 8_000_000
    response = await push_then_read(parley.port, f"site_key={site_key}&session_id={SID}", body)
    status = 404 if refusal == "unknown_site" else 413
    assert response.startswith(f"HTTP/1.1 {status}".encode())
    assert f'"code":"{refusal}"'.encode() in response
    assert spooled(parley) == []
    assert parley.app is not None
    drains = parley.app.drains  # the refused body was read and dropped as any route's is
    await eventually(lambda: drains.in_use == 0, what="the drain given back")


async def test_a_refusal_while_the_body_comes_in_is_read_by_a_client_pushing_it_whole(parley):
    """The form goes wrong after its start (a text field too long): answered then, and the rest of
    the body read and dropped, so the client reads the JSON rather than a reset."""
    body = (b"--b0undary\r\nContent-Disposition: form-data; name=\"site_key\"\r\n\r\n" + b"k" * 1000
            + b"\r\n" + multipart_head() + b"\0" * 4_000_000)
    response = await push_then_read(parley.port, f"site_key={parley.site_key}&session_id={SID}", body)
    assert response.startswith(b"HTTP/1.1 400") and b'"code":"invalid_request"' in response
    assert spooled(parley) == []
    assert parley.app is not None
    drains, slots = parley.app.drains, parley.services.chat.uploads.slots
    await eventually(lambda: drains.in_use == 0 and slots.in_use == 0, what="the drain and the slot given back")


async def test_a_chunked_upload_is_refused_before_its_body_and_the_body_then_dropped(parley):
    """The JSON error comes with the body still unsent (it used to wait for the whole body); a
    client that then sends it all still reads the answer, and the connection closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", parley.port)
    try:
        writer.write((f"POST {UPLOAD}?site_key=sk_{'z' * 30}&session_id={SID} HTTP/1.1\r\nHost: x\r\n"
                      "Content-Type: multipart/form-data; boundary=b0undary\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 404") and b"\r\nConnection: close" in head
        form = multipart_head() + b"\0" * 2_000_000
        for at in range(0, len(form), 64 * 1024):
            piece = form[at:at + 64 * 1024]
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 10)  # the JSON, then the server closes
    finally:
        writer.close()
    assert b'"code":"unknown_site"' in rest
    assert parley.app is not None
    drains = parley.app.drains
    await eventually(lambda: drains.in_use == 0, what="the drain given back")


async def test_an_address_dropping_its_share_of_refused_bodies_is_answered_and_closed(parley):
    """Refused bodies read and dropped at once are bounded per address (as refused uploads were):
    past that, the refusal goes out and the connection closes with the body unread."""
    assert parley.app is not None
    drains = parley.app.drains
    for _ in range(drains.per_address):
        assert drains.take("127.0.0.1")
    try:
        reader, writer = await raw_upload_start(parley, f"site_key=sk_{'z' * 30}&session_id={SID}",
                                                8_000_000, multipart_head())
        response = await asyncio.wait_for(reader.read(), 10)  # closed with 8 MB still unsent
        writer.close()
    finally:
        for _ in range(drains.per_address):
            drains.give_back("127.0.0.1")
    assert response.startswith(b"HTTP/1.1 404") and b'"code":"unknown_site"' in response


async def test_with_expect_100_continue_an_accepted_upload_is_told_to_go_on(parley):
    image = jpeg_bytes()
    form = multipart_head() + image + b"\r\n--b0undary--\r\n"
    reader, writer = await raw_upload_start(parley, f"site_key={parley.site_key}&session_id={SID}",
                                            len(form), b"", expect=True)
    go_on = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert go_on.startswith(b"HTTP/1.1 100")
    writer.write(form)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")


async def test_a_chunked_body_over_the_sites_limit_is_a_413_in_json(parley):
    await parley.services.sites.update_settings(parley.site.id, {"upload_max_bytes": 100_000})

    async def body():
        yield multipart_head()
        for _ in range(300):  # 3 MB, sent without a length
            yield b"\0" * 10_000

    response = await parley.client.post(
        UPLOAD, params=parley.ids(SID), content=body(),
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    assert spooled(parley) == []


async def test_a_chunked_body_over_the_routes_limit_is_a_413_in_json_not_a_bare_400(parley, monkeypatch):
    """Bytes the form's parser lets by (after its last boundary) still count against the route's
    limit: past it, the same 413 JSON as for a declared length, where Tornado answered a bare 400."""
    monkeypatch.setattr(UploadImageHandler, "max_body_bytes", 200_000)

    async def body():
        yield multipart_head() + jpeg_bytes() + b"\r\n--b0undary--\r\n"
        for _ in range(30):  # 300 KB after the form's end, sent without a length
            yield b"\0" * 10_000

    response = await parley.client.post(
        UPLOAD, params=parley.ids(SID), content=body(),
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    assert "200000 bytes" in response.json()["error"]
    assert spooled(parley) == []


async def test_a_declared_length_over_the_sites_limit_is_refused_at_once(parley):
    await parley.services.sites.update_settings(parley.site.id, {"upload_max_bytes": 100_000})
    reader, writer = await raw_upload_start(parley, f"site_key={parley.site_key}&session_id={SID}",
                                            5_000_000, b"", expect=True)
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert response.startswith(b"HTTP/1.1 413") and b'"code":"too_large"' in response


async def test_uploads_at_once_are_capped_per_address(parley):
    slots = parley.services.chat.uploads.slots
    started = [await raw_upload_start(parley, f"site_key={parley.site_key}&session_id={session(n)}",
                                      1_000_000, multipart_head())
               for n in range(slots.per_address)]  # other sessions: each within its own rate
    await eventually(lambda: slots.in_use == slots.per_address, what="every upload slot taken")
    refused = await parley.client.post(UPLOAD, params=parley.ids(SID),
                                       files={"image": ("a.jpg", jpeg_bytes(), "image/jpeg")})
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert refused.headers["retry-after"]
    for _, writer in started:  # they give up: their slots and spool files are freed
        writer.close()
    await eventually(lambda: slots.in_use == 0, what="the upload slots freed")
    assert spooled(parley) == []
    accepted = await parley.client.post(UPLOAD, params=parley.ids(SID),
                                        files={"image": ("a.jpg", jpeg_bytes(), "image/jpeg")})
    assert accepted.status_code == 200


async def test_a_full_disk_is_a_503_and_leaves_no_partial_file(parley):
    class FullDisk:
        """A spool file on a disk that fills up after 100 KB."""

        def __init__(self, directory):
            self.file = open_spool_file(directory)
            self.name = self.file.name
            self.written = 0

        def write(self, data: bytes) -> int:
            self.written += len(data)
            if self.written > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def close(self) -> None:
            self.file.close()

    parley.services.chat.uploads.open_file = FullDisk
    image = jpeg_bytes((1500, 1500), color=(10, 200, 90)) + b"\0" * 300_000
    response = await parley.client.post(UPLOAD, params=parley.ids(SID),
                                        files={"image": ("a.jpg", image, "image/jpeg")})
    assert response.status_code == 503 and response.json()["code"] == "unavailable"
    assert spooled(parley) == []
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert history == []


async def test_readiness_says_so_when_the_data_directory_cannot_be_written(parley):
    assert (await parley.client.get("/readyz")).status_code == 200
    directory = parley.services.chat.uploads.directory
    directory.rmdir()
    directory.write_text("not a directory")  # as good as a read-only or full disk
    ready = await parley.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["disk"] == "not writable"


async def test_probes_share_one_disk_check_while_the_disk_hangs(parley, monkeypatch):
    # Each probe taking a thread of its own would fill the thread pool that sign-ins (argon2),
    # image checks and knowledge indexing need, one stuck thread every few seconds.
    readiness = parley.services.readiness
    readiness.timeout = 0.2
    disk_answers = threading.Event()
    checks: list[int] = []

    def stuck_write() -> bool:
        checks.append(1)
        disk_answers.wait(timeout=30)
        return len(checks) > 1  # the stuck write fails in the end; the disk is back for the next

    monkeypatch.setattr(readiness.uploads, "can_write", stuck_write)
    try:
        for _ in range(3):
            probe = await parley.client.get("/readyz", timeout=10)
            assert probe.status_code == 503 and probe.json()["disk"] == "not writable"
        assert len(checks) == 1
    finally:
        disk_answers.set()

    async def ready() -> bool:
        return (await parley.client.get("/readyz", timeout=10)).status_code == 200

    await eventually(ready, what="a new disk check once the stuck one ended")
    assert len(checks) == 2


async def test_a_phone_photo_with_several_pictures_is_accepted_as_jpeg(parley):
    out = io.BytesIO()
    first, second = Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (64, 48), (0, 0, 90))
    first.save(out, format="MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(out.getvalue())).format == "MPO"
    response = await parley.client.post(UPLOAD, params=parley.ids(SID),
                                        files={"image": ("IMG_0001.JPG", out.getvalue(), "image/jpeg")})
    assert response.status_code == 200 and response.json()["url"].endswith(".jpg")
    served = await parley.client.get(response.json()["url"])
    assert Image.open(io.BytesIO(served.content)).format == "JPEG"


async def test_a_declared_50000_by_50000_image_is_413(parley):
    response = await parley.client.post(UPLOAD, params=parley.ids(SID),
                                        files={"image": ("huge.png", declared_png(50_000, 50_000), "image/png")})
    assert response.status_code == 413 and response.json()["code"] == "too_large"


async def test_the_ids_may_come_in_the_form_only(parley):
    response = await parley.client.post(UPLOAD, data=parley.ids(SID),
                                        files={"image": ("a.jpg", jpeg_bytes(), "image/jpeg")})
    assert response.status_code == 200


async def test_one_address_decodes_one_image_at_a_time_and_leaves_the_rest_free():
    turns = FairTurns(slots=2, per_address=1)
    release = asyncio.Event()
    started: list[str] = []

    async def decode(address: str, name: str) -> None:
        async with turns.turn(address, timeout=10):
            started.append(name)
            await release.wait()

    flood = [asyncio.create_task(decode("flood", f"flood-{n}")) for n in range(5)]
    await asyncio.sleep(0)
    normal = asyncio.create_task(decode("visitor", "visitor"))
    await asyncio.sleep(0)
    assert started == ["flood-0", "visitor"]  # the visitor did not queue behind the flood
    release.set()
    await asyncio.gather(*flood, normal)


async def test_decodes_are_shared_in_turns_between_addresses():
    turns = FairTurns(slots=1)
    order: list[str] = []
    release = asyncio.Event()

    async def decode(address: str, name: str) -> None:
        async with turns.turn(address, timeout=10):
            order.append(name)
            await release.wait()

    busy = asyncio.create_task(decode("flood", "flood-0"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(decode("flood", f"flood-{n}")) for n in range(1, 6)]
    await asyncio.sleep(0)
    normal = asyncio.create_task(decode("visitor", "visitor"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(busy, *waiting, normal)
    # The visitor who came after five waiting images of another address goes second, not seventh.
    assert order[:3] == ["flood-0", "flood-1", "visitor"]


async def test_a_turn_not_given_in_time_is_a_503_and_frees_its_place():
    turns = FairTurns(slots=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with turns.turn("a", timeout=10):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    from server.errors import Unavailable
    with pytest.raises(Unavailable):
        async with turns.turn("b", timeout=0.05):
            pass
    release.set()
    await holder
    async with turns.turn("c", timeout=1):
        pass


async def test_no_room_for_the_stored_image_is_a_503_and_leaves_nothing(parley, monkeypatch):
    blobs = parley.services.blobs
    if not hasattr(blobs, "root"):
        pytest.skip("local blobs only")

    def full(self, data):
        with open(self, "wb") as partial:
            partial.write(data[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(blobs.root), "write_bytes", full)
    response = await parley.client.post(UPLOAD, params=parley.ids(SID),
                                        files={"image": ("a.jpg", jpeg_bytes(), "image/jpeg")})
    monkeypatch.undo()
    assert response.status_code == 503 and response.json()["code"] == "unavailable"
    assert list(blobs.root.iterdir()) == [] and spooled(parley) == []
