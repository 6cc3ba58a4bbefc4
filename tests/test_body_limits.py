"""Request bodies: each route takes what it needs and no more, and a body declared larger is
answered 413 before any of it is read (so nobody can make the server hold megabytes per
connection), over real sockets: the answer arrives while the client has sent none of its body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import pytest

import handlers.base
import handlers.body_limit as body_limit_module
from handlers.body_limit import DEFAULT_BODY_LIMIT, DRAIN_BYTES, MAX_DRAINING
from handlers.dashboard_admin import KnowledgeHandler
from server.app import ParleyApplication
from server.knowledge import MAX_DOCUMENT_BYTES
from server.sites import MAX_UPLOAD_SETTING
from tests.dashboard import Operator
from tests.harness import Parley, session
from tests.test_dashboard_knowledge_live import knowledge_url, upload
from tests.test_dashboard_sites import admin, agent  # noqa: F401 - fixtures
from tests.test_uploads import jpeg_bytes, spooled
from tests.waiting import eventually

BIG = 20_000_000  # what the image upload's limit used to let any route buffer
SID = session("bodies")


async def send_head(parley: Parley, method: str, path: str, length: int | None, *,
                    expect: bool = False, headers: str = "", body: bytes = b""
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", parley.port)
    framing = (f"Content-Length: {length}\r\n" if length is not None
               else "Transfer-Encoding: chunked\r\n")
    writer.write((f"{method} {path} HTTP/1.1\r\nHost: x\r\n{framing}{headers}"
                  + ("Expect: 100-continue\r\n" if expect else "") + "\r\n").encode() + body)
    await writer.drain()
    return reader, writer


async def answer_before_body(parley: Parley, method: str, path: str, length: int, *,
                             expect: bool = False, headers: str = "") -> tuple[str, dict[str, str], bytes]:
    """The status line, headers and body of the answer to a request whose body is never sent."""
    reader, writer = await send_head(parley, method, path, length, expect=expect, headers=headers)
    try:
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        status, *lines = head.strip().split("\r\n")
        fields = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
        length = 0 if method == "HEAD" else int(fields.get("content-length", 0))
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        return status, fields, body
    finally:
        writer.close()


@pytest.mark.parametrize("method, path", [
    ("POST", "/api/v1/chat/email"),
    ("POST", "/api/v1/chat/stream"),
    ("GET", "/api/v1/chat/history"),
    ("POST", "/api/v1/no-such-endpoint"),
])
async def test_an_oversized_body_to_a_json_endpoint_is_a_413_in_json_before_it_is_read(parley, method, path):
    status, headers, body = await answer_before_body(parley, method, path, BIG)
    assert status.startswith("HTTP/1.1 413")
    assert headers["connection"] == "close"
    refusal = json.loads(body)
    assert refusal["success"] is False and refusal["code"] == "too_large"
    assert "64 KB" in refusal["error"]


@pytest.mark.parametrize("method, path", [
    ("POST", "/dashboard/login"),
    ("POST", "/dashboard/setup"),
    ("GET", "/healthz"),
    ("POST", "/healthz"),
    ("HEAD", "/readyz"),
    ("GET", "/demo"),
    ("POST", "/no-such-page"),
])
async def test_an_oversized_body_to_a_page_form_or_health_route_is_refused_before_it_is_read(parley, method, path):
    status, headers, body = await answer_before_body(parley, method, path, BIG)
    assert status.startswith("HTTP/1.1 413")
    assert headers["connection"] == "close"
    if method != "HEAD":
        assert b"larger than 64 KB" in body


async def test_a_body_just_over_the_default_limit_is_refused_and_one_at_it_is_read(parley):
    over = await answer_before_body(parley, "POST", "/dashboard/login", DEFAULT_BODY_LIMIT + 1)
    assert over[0].startswith("HTTP/1.1 413")
    form = b"email=a%40example.com&password=x&padding=" + b"x" * (DEFAULT_BODY_LIMIT - 100)
    form = form[:DEFAULT_BODY_LIMIT]
    reader, writer = await send_head(parley, "POST", "/dashboard/login", len(form), body=form,
                                     headers="Content-Type: application/x-www-form-urlencoded\r\n"
                                             "Connection: close\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 403")  # read and parsed: no XSRF token in it


async def test_with_expect_100_continue_the_refusal_comes_at_once_and_the_connection_closes(parley):
    reader, writer = await send_head(parley, "POST", "/api/v1/chat/email", BIG, expect=True)
    answer = await asyncio.wait_for(reader.read(), 10)  # to the end: the server closed
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413")  # no "100 Continue" first: the body is not wanted
    assert b'"code":"too_large"' in answer


async def test_a_client_pushing_its_whole_oversized_body_reads_the_413_then_the_connection_closes(parley):
    """Most clients read only once their body is sent: the refused body is read and dropped."""
    body = b"x" * 3_000_000
    reader, writer = await send_head(parley, "POST", "/dashboard/login", len(body))
    for start in range(0, len(body), 64 * 1024):
        writer.write(body[start:start + 64 * 1024])
        await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"larger than 64 KB" in answer
    drains = app(parley).drains
    await eventually(lambda: drains.in_use == 0, what="the drain given back")


def app(parley: Parley) -> ParleyApplication:
    assert parley.app is not None
    return parley.app


async def test_a_body_declared_larger_than_anything_is_read_is_answered_and_closed(parley):
    status, headers, body = await answer_before_body(parley, "POST", "/dashboard/login", DRAIN_BYTES + 1)
    assert status.startswith("HTTP/1.1 413")
    reader, writer = await send_head(parley, "POST", "/dashboard/login", DRAIN_BYTES + 1)
    answer = await asyncio.wait_for(reader.read(), 10)  # closed right after the answer
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413")


async def test_drains_at_once_are_bounded(parley):
    drains = app(parley).drains
    drains.in_use = MAX_DRAINING  # all taken: the next refusal closes at once
    try:
        reader, writer = await send_head(parley, "POST", "/healthz", 1_000_000)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        drains.in_use = 0
    assert answer.startswith(b"HTTP/1.1 413")


def chunked(data: bytes, piece: int = 16 * 1024) -> bytes:
    """`data` framed as a chunked body, `piece` bytes a chunk, with its last chunk."""
    return b"".join(f"{len(data[at:at + piece]):x}\r\n".encode() + data[at:at + piece] + b"\r\n"
                    for at in range(0, len(data), piece)) + b"0\r\n\r\n"


async def read_answer(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
    status, *lines = head.strip().split("\r\n")
    fields = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(fields.get("content-length", 0))), 10)
    return status, fields, body


@pytest.mark.parametrize("path, json_errors", [
    ("/dashboard/login", False),
    ("/dashboard/api/inbox", True),
    ("/healthz", False),
])
async def test_a_chunked_body_over_its_routes_limit_is_a_413_like_a_declared_one(parley, caplog, path, json_errors):
    """Tornado itself answered a bare 400 and closed: the client now reads our 413, after pushing
    its whole body (read and dropped), and the log says what happened."""
    reader, writer = await send_head(parley, "POST", path, None,
                                     headers="Content-Type: application/x-www-form-urlencoded\r\n")
    try:
        with caplog.at_level(logging.INFO, logger="handlers.body_limit"):
            writer.write(chunked(b"x" * (3 * DEFAULT_BODY_LIMIT)))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)  # to the end: closed after the answer
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"\r\nConnection: close" in head
    if json_errors:
        refusal = json.loads(body)
        assert refusal["success"] is False and refusal["code"] == "too_large" and "64 KB" in refusal["error"]
    else:
        assert b"larger than 64 KB" in body
    assert (f"POST {path} from 127.0.0.1: refused a body sent without a length as it passed "
            f"{DEFAULT_BODY_LIMIT} bytes") in caplog.text
    await eventually(lambda: app(parley).drains.in_use == 0, what="the drain given back")


async def test_a_chunked_body_is_answered_as_soon_as_it_passes_the_limit(parley):
    """However large its chunks say they are: nothing past the limit is kept, and the answer does
    not wait for the rest (one chunk declaring 1 GB, of which 100 KB is sent)."""
    reader, writer = await send_head(parley, "POST", "/dashboard/login", None,
                                     body=f"{2 ** 30:x}\r\n".encode() + b"x" * 100_000)
    try:
        status, headers, body = await read_answer(reader)
    finally:
        writer.close()
    assert status.startswith("HTTP/1.1 413") and headers["connection"] == "close"
    assert b"larger than 64 KB" in body


async def test_a_chunked_body_within_its_routes_limit_still_reaches_the_route(parley):
    form = b"email=a%40example.com&password=x"
    reader, writer = await send_head(parley, "POST", "/dashboard/login", None, body=chunked(form, piece=7),
                                     headers="Content-Type: application/x-www-form-urlencoded\r\n"
                                             "Connection: close\r\n")
    try:
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 403")  # read and parsed: no XSRF token in it


async def test_a_chunked_body_dropped_past_the_drain_bound_is_cut_off(parley, caplog, monkeypatch):
    monkeypatch.setattr(body_limit_module, "DRAIN_BYTES", 256 * 1024)
    reader, writer = await send_head(parley, "POST", "/dashboard/login", None,
                                     body=f"{2 ** 30:x}\r\n".encode() + b"x" * (DEFAULT_BODY_LIMIT + 1))
    try:
        status, _, _ = await read_answer(reader)
        assert status.startswith("HTTP/1.1 413")
        with caplog.at_level(logging.INFO, logger="handlers.body_limit"):
            with contextlib.suppress(ConnectionError):
                for _ in range(64):  # 4 MB at most: 16 times the bound
                    writer.write(b"x" * 64 * 1024)
                    await writer.drain()
            with contextlib.suppress(ConnectionError):  # closed by the server: an end or a reset
                assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    assert "stopped reading a refused body (more than 256 KB after the answer)" in caplog.text
    await eventually(lambda: app(parley).drains.in_use == 0, what="the drain given back")


async def test_a_chunked_body_over_the_widget_apis_limit_is_read_then_refused_like_a_declared_one(parley):
    """The widget API streams its bodies: it reads such a body to its end, keeping none of it past
    the limit, and answers the same 413 JSON as for a declared length."""
    reader, writer = await send_head(parley, "POST", "/api/v1/chat/email", None,
                                     headers="Content-Type: application/json\r\n",
                                     body=chunked(b"x" * (3 * DEFAULT_BODY_LIMIT)))
    try:
        status, _, body = await read_answer(reader)
    finally:
        writer.close()
    declared = await answer_before_body(parley, "POST", "/api/v1/chat/email", BIG)
    assert status.startswith("HTTP/1.1 413") and declared[0].startswith("HTTP/1.1 413")
    assert json.loads(body) == json.loads(declared[2])


async def test_a_chunked_body_to_the_widget_api_past_the_drain_bound_is_refused_there(parley, caplog, monkeypatch):
    """Tornado answered a bare 400 at once for a chunk that only says it is 1 GB: now the body is
    read up to the bound past the limit, then the 413 JSON goes out and the connection closes."""
    monkeypatch.setattr(handlers.base, "DRAIN_BYTES", 256 * 1024)
    reader, writer = await send_head(parley, "POST", "/api/v1/chat/email", None,
                                     headers="Content-Type: application/json\r\n",
                                     body=f"{2 ** 30:x}\r\n".encode())
    try:
        with caplog.at_level(logging.INFO, logger="handlers.base"):
            writer.write(b"x" * (DEFAULT_BODY_LIMIT + 256 * 1024 + 1))  # to the byte past the bound
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)  # to the end: closed after the answer
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["code"] == "too_large"
    assert ("POST /api/v1/chat/email from 127.0.0.1: stopped reading a body sent without a length "
            "256 KB past its limit") in caplog.text


@pytest.mark.parametrize("length", [1_000_000, None])
async def test_a_refused_body_still_coming_after_the_drain_time_is_cut_off(parley, caplog, monkeypatch, length):
    """The drain's time runs from the answer, for a declared body and a chunked one alike."""
    monkeypatch.setattr(body_limit_module, "DRAIN_SECONDS", 0.5)
    first = b"x" * 100 if length else f"{2 ** 30:x}\r\n".encode() + b"x" * (DEFAULT_BODY_LIMIT + 1)
    reader, writer = await send_head(parley, "POST", "/healthz", length, body=first)
    try:
        status, _, _ = await read_answer(reader)
        assert status.startswith("HTTP/1.1 413")
        with caplog.at_level(logging.INFO, logger="handlers.body_limit"):
            with contextlib.suppress(ConnectionError):  # the client sends nothing more: closed on it
                assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    assert "stopped reading a refused body (still coming after 0.5 s)" in caplog.text
    await eventually(lambda: app(parley).drains.in_use == 0, what="the drain given back")


async def test_a_chunked_body_over_a_streaming_pages_limit_is_a_413_page_then_dropped(
        parley: Parley, admin: Operator, monkeypatch):
    """The knowledge page streams its body (an admin's is kept): one without a length that passes
    the page's limit is answered 413 there, like a declared one, not Tornado's bare 400."""
    monkeypatch.setattr(KnowledgeHandler, "max_body_bytes", 100_000)
    cookies = "; ".join(f"{name}={value}" for name, value in admin.client.cookies.items())
    reader, writer = await send_head(parley, "POST", knowledge_url(parley), None,
                                     headers="Content-Type: multipart/form-data; boundary=b0undary\r\n"
                                             f"Cookie: {cookies}\r\n",
                                     body=f"{300_001:x}\r\n".encode() + b"x" * 100_001)
    try:
        status, headers, body = await read_answer(reader)
        assert status.startswith("HTTP/1.1 413") and headers["connection"] == "close"
        assert b"larger than 100000 bytes" in body
        writer.write(b"x" * 200_000 + b"\r\n0\r\n\r\n")  # the rest, read and dropped
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # then closed
    finally:
        writer.close()
    await eventually(lambda: app(parley).drains.in_use == 0, what="the drain given back")


async def test_drains_from_one_address_are_bounded(parley):
    """Past its address's share, a refusal is answered and the connection closed at once, with the
    body unread; another address still has its drains."""
    drains = app(parley).drains
    for _ in range(drains.per_address):
        assert drains.take("127.0.0.1")
    try:
        assert drains.take("192.0.2.1")
        drains.give_back("192.0.2.1")
        reader, writer = await send_head(parley, "POST", "/healthz", 1_000_000)
        answer = await asyncio.wait_for(reader.read(), 10)  # closed with 1 MB still unsent
        writer.close()
    finally:
        for _ in range(drains.per_address):
            drains.give_back("127.0.0.1")
    assert answer.startswith(b"HTTP/1.1 413")
    assert drains.in_use == 0


async def test_an_image_upload_near_its_limit_is_still_taken(parley):
    await parley.services.sites.update_settings(parley.site.id, {"upload_max_bytes": MAX_UPLOAD_SETTING})
    image = jpeg_bytes() + b"\0" * (MAX_UPLOAD_SETTING - 100_000)  # bytes after the image's end
    response = await parley.client.post("/api/v1/chat/upload-image", params=parley.ids(SID),
                                        data=parley.ids(SID), files={"image": ("big.jpg", image, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    assert spooled(parley) == []


async def test_a_knowledge_upload_at_its_limit_is_still_taken(parley: Parley, admin: Operator):
    line = b"Our shoes are made in Porto from leather tanned without chromium.\n"
    text = b"# Making\n\n" + line * ((MAX_DOCUMENT_BYTES - 20) // len(line))
    assert MAX_DOCUMENT_BYTES - len(line) < len(text) <= MAX_DOCUMENT_BYTES
    response = await upload(admin, knowledge_url(parley), "making.md", text)
    assert response.status_code == 302
    assert "Added Making." in (await admin.client.get(response.headers["Location"])).text


async def test_a_knowledge_upload_is_refused_before_its_body_unless_an_admin_sends_it(
        parley: Parley, agent: Operator):
    url = knowledge_url(parley)
    form = "Content-Type: multipart/form-data; boundary=b0undary\r\n"
    status, headers, _ = await answer_before_body(parley, "POST", url, MAX_DOCUMENT_BYTES, headers=form)
    assert status.startswith("HTTP/1.1 302") and headers["location"] == "/dashboard/login"
    cookies = "; ".join(f"{name}={value}" for name, value in agent.client.cookies.items())
    status, _, body = await answer_before_body(parley, "POST", url, MAX_DOCUMENT_BYTES,
                                               headers=f"{form}Cookie: {cookies}\r\n")
    assert status.startswith("HTTP/1.1 403") and b"Only admins" in body
    status, _, _ = await answer_before_body(parley, "POST", url, MAX_DOCUMENT_BYTES + 64 * 1024 + 1, headers=form)
    assert status.startswith("HTTP/1.1 413")


async def test_a_signed_out_browser_pushing_a_whole_knowledge_upload_reads_the_redirect(parley: Parley):
    """Answered before the body, which is then read and dropped: not closed on a client still
    sending (Chromium showed that as a connection reset)."""
    body = b"x" * 4_000_000
    reader, writer = await send_head(parley, "POST", knowledge_url(parley), len(body),
                                     headers="Content-Type: multipart/form-data; boundary=b0undary\r\n")
    for start in range(0, len(body), 64 * 1024):
        writer.write(body[start:start + 64 * 1024])
        await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 302") and b"Location: /dashboard/login\r\n" in answer
    drains = app(parley).drains
    await eventually(lambda: drains.in_use == 0, what="the drain given back")


async def test_a_knowledge_form_without_its_xsrf_token_does_nothing(parley: Parley, admin: Operator):
    response = await admin.client.post(knowledge_url(parley), data={"action": "reindex"})
    assert response.status_code == 403
    response = await admin.client.post(knowledge_url(parley), data={"action": "add_text", "_xsrf": "forged",
                                                                    "title": "x", "text": "y"})
    assert response.status_code == 403
    titles = {d.title for d in await parley.services.store.list_documents(parley.site.id)}
    assert "x" not in titles


@pytest.mark.parametrize("path", ["/dashboard/login", "/api/v1/chat/email",
                                  "/dashboard/sites/{site_key}/knowledge"])
async def test_a_client_leaving_mid_body_is_no_longer_a_request_in_progress(parley: Parley, path: str):
    """A shutdown waits for the requests in progress; one whose client left while sending its body
    never finishes, and used to be counted for ever (a 5 s wait and a warning at every shutdown)."""
    application = app(parley)
    reader, writer = await send_head(parley, "POST", path.format(site_key=parley.site_key), 10_000,
                                     body=b"x" * 100)
    await eventually(lambda: application.in_flight == 1, what="the request under way")
    writer.close()
    await eventually(lambda: application.in_flight == 0, what="the request counted as ended")
    assert await application.idle(5)
