"""The widget's JSON endpoints: happy paths and every error row of the contract."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import time

import pytest
from PIL import Image

from server.store.sqlite import SQLiteStore
from tests.harness import session
from tests.waiting import eventually

SID = session("endpoints")


def png_bytes(size=(8, 8), exif: bytes | None = None, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", size, (200, 30, 30))
    options = {"exif": exif} if exif else {}
    image.save(out, format=fmt, **options)
    return out.getvalue()


async def test_history_of_an_unknown_session_is_empty(parley):
    response = await parley.get("history", **parley.ids(SID))
    assert response.status_code == 200
    assert response.json() == {"success": True, "messages": [], "conversation_id": None, "mode": "ai",
                               "ask_email": False}


async def test_history_is_oldest_first_with_an_after_cursor_and_a_limit(parley):
    await parley.ask(SID, "Do you ship to Canada?", message_id="m_1")
    await parley.ask(SID, "What about returns?", message_id="m_2")
    full = (await parley.get("history", **parley.ids(SID))).json()
    messages = full["messages"]
    assert [m["role"] for m in messages] == ["visitor", "ai", "visitor", "ai"]
    assert [m["id"] for m in messages] == sorted(m["id"] for m in messages)
    first = messages[0]
    assert set(first) == {"id", "role", "content", "created_at", "message_id", "image_url",
                          "operator_name", "sources", "status"}
    assert first["message_id"] == "m_1" and first["created_at"].endswith("Z")
    after = (await parley.get("history", **parley.ids(SID), after=messages[1]["id"])).json()
    assert [m["message_id"] for m in after["messages"]][:1] == ["m_2"]
    limited = (await parley.get("history", **parley.ids(SID), limit=1)).json()
    assert len(limited["messages"]) == 1
    assert (await parley.get("history", **parley.ids(SID), limit=500)).status_code == 400
    assert (await parley.get("history", **parley.ids(SID), after="x")).status_code == 400


async def test_email_is_saved_with_the_seed_message(parley):
    response = await parley.post("email", parley.ids(SID, email="Jane@Example.COM"))
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "Email saved"}
    conversation = await parley.services.store.get_conversation(parley.site.id, SID)
    assert conversation.email == "Jane@example.com"


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "", {"$gt": ""}, 42])
async def test_bad_emails_are_400(parley, email):
    response = await parley.post("email", parley.ids(SID, email=email))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_a_malformed_session_id_is_refused_with_what_one_looks_like(parley):
    response = await parley.get("history", **parley.ids("session-42"))
    assert response.status_code == 400
    assert response.json()["error"] == ("'session_id' is not in the expected format: 'sess_' then 16 to 64 "
                                        "letters, digits, '-' or '_'.")


async def test_contact_saves_name_email_and_a_normalised_phone(parley):
    response = await parley.post("contact", parley.ids(SID, email="jane@example.com",
                                                       phone="+1 555-123-4567", name="Jane"))
    assert response.json() == {"success": True, "message": "Contact saved"}
    conversation = await parley.services.store.get_conversation(parley.site.id, SID)
    assert (conversation.email, conversation.phone, conversation.contact_name) == (
        "jane@example.com", "+15551234567", "Jane")


@pytest.mark.parametrize("body", [{"name": "Jane"}, {"phone": "555"}, {"email": "x@y.z", "name": "n" * 201}])
async def test_contact_refuses_what_it_cannot_use(parley, body):
    response = await parley.post("contact", parley.ids(SID, **body))
    assert response.status_code == 400


async def test_rating_needs_a_conversation_and_an_integer(parley):
    response = await parley.post("rate", parley.ids(SID, score=5))
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_conversation"
    await parley.ask(SID, "hello")
    for bad in ("5", 5.5, 0, 6, True, None):
        assert (await parley.post("rate", parley.ids(SID, score=bad))).status_code == 400, bad
    assert (await parley.post("rate", parley.ids(SID, score=4))).json() == {"success": True}
    assert (await parley.post("rate", parley.ids(SID, score=5))).json() == {"success": True}
    conversation = await parley.services.store.get_conversation(parley.site.id, SID)
    assert conversation.rating == 5


async def test_a_rating_comment_needs_a_rating_first(parley):
    await parley.ask(SID, "hello")
    early = await parley.post("rate/comment", parley.ids(SID, comment="Great!"))
    assert early.status_code == 409
    assert early.json()["code"] == "conflict"
    await parley.post("rate", parley.ids(SID, score=5))
    assert (await parley.post("rate/comment", parley.ids(SID, comment="Great!"))).json() == {"success": True}
    assert (await parley.post("rate/comment", parley.ids(SID, comment="x" * 2001))).status_code == 400
    conversation = await parley.services.store.get_conversation(parley.site.id, SID)
    assert conversation.rating_comment == "Great!"


async def test_a_blocked_visitor_is_refused_by_every_write(parley):
    await parley.ask(SID, "hello")
    assert (await parley.get("block-status", **parley.ids(SID))).json() == {"success": True, "blocked": False}
    await parley.services.operators.block(parley.site, "session", SID)
    assert (await parley.get("block-status", **parley.ids(SID))).json() == {"success": True, "blocked": True}
    writes = [("stream", {"message": "hi"}), ("email", {"email": "a@b.co"}),
              ("contact", {"phone": "+15551234567"}), ("rate", {"score": 1}),
              ("rate/comment", {"comment": "bad"})]
    for path, extra in writes:
        response = await parley.post(path, parley.ids(SID, **extra))
        assert response.status_code == 403, path
        assert response.json()["code"] == "blocked"
    upload = await parley.client.post("/api/v1/chat/upload-image", data=parley.ids(SID),
                                      files={"image": ("a.png", png_bytes(), "image/png")})
    assert upload.status_code == 403
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert [m["role"] for m in history] == ["visitor", "ai"]


async def test_blocks_match_ip_and_email_and_expire(parley):
    other = session("blocked-ip")
    await parley.services.operators.block(parley.site, "ip", "127.0.0.1")
    assert (await parley.get("block-status", **parley.ids(other))).json()["blocked"] is True
    await parley.services.operators.unblock(parley.site, "ip", "127.0.0.1")
    assert (await parley.get("block-status", **parley.ids(other))).json()["blocked"] is False
    await parley.post("email", parley.ids(other, email="troll@example.com"))
    await parley.services.operators.block(parley.site, "email", "TROLL@example.com")
    assert (await parley.get("block-status", **parley.ids(other))).json()["blocked"] is True
    await parley.services.operators.unblock(parley.site, "email", "troll@example.com")
    await parley.services.operators.block(parley.site, "session", other, minutes=1 / 600)
    assert (await parley.get("block-status", **parley.ids(other))).json()["blocked"] is True

    async def lifted() -> bool:
        return (await parley.get("block-status", **parley.ids(other))).json()["blocked"] is False

    await eventually(lifted, what="the 0.1 s block to expire")


async def test_operator_messages_and_mode(parley):
    empty = (await parley.get("operator-messages", **parley.ids(SID))).json()
    assert empty == {"success": True, "messages": [], "mode": "ai"}
    await parley.ask(SID, "hello")
    await parley.services.operators.set_mode(parley.site, SID, "operator")
    sent = await parley.services.operators.say(parley.site, SID, "Hi, I'm Ana", operator_name="Ana")
    body = (await parley.get("operator-messages", **parley.ids(SID))).json()
    assert body["mode"] == "operator"
    assert [(m["content"], m["operator_name"], m["role"]) for m in body["messages"]] == [
        ("Hi, I'm Ana", "Ana", "operator")]
    later = (await parley.get("operator-messages", **parley.ids(SID), after=sent.id)).json()
    assert later["messages"] == []


async def test_pending_proactive_is_acknowledged_by_after(parley):
    first = await parley.services.operators.send_proactive(parley.site, SID, "Need help?")
    second = await parley.services.operators.send_proactive(parley.site, SID, "10% off today")
    body = (await parley.get("pending-proactive", **parley.ids(SID))).json()
    assert body["success"] is True
    assert [(m["id"], m["content"], m["from"]) for m in body["messages"]] == [
        (first.id, "Need help?", "operator"), (second.id, "10% off today", "operator")]
    assert set(body["messages"][0]) == {"id", "content", "created_at", "from"}
    # A lost response is delivered again until acknowledged.
    again = (await parley.get("pending-proactive", **parley.ids(SID))).json()
    assert len(again["messages"]) == 2
    acked = (await parley.get("pending-proactive", **parley.ids(SID), after=first.id)).json()
    assert [m["id"] for m in acked["messages"]] == [second.id]


async def test_upload_stores_a_clean_image_served_back_with_its_type(parley):
    exif = Image.Exif()
    exif[0x8825] = {2: (51.0, 30.0, 0.0)}  # GPSInfo
    jpeg = png_bytes((40, 30), exif=exif.tobytes(), fmt="JPEG")
    assert b"Exif" in jpeg
    response = await parley.client.post(
        "/api/v1/chat/upload-image", data=parley.ids(SID),
        files={"image": ("holiday.png", jpeg, "image/png")})  # the declared type lies
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["url"].startswith(parley.base_url + "/uploads/") and body["url"].endswith(".jpg")
    assert "holiday" not in body["url"]
    served = await parley.client.get(body["url"])
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/jpeg"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert b"Exif" not in served.content
    assert Image.open(io.BytesIO(served.content)).size == (40, 30)
    history = (await parley.get("history", **parley.ids(SID))).json()["messages"]
    assert history[-1]["image_url"] == body["url"] and history[-1]["role"] == "visitor"


async def test_upload_refuses_fakes_and_oversized_images(parley):
    fake = await parley.client.post("/api/v1/chat/upload-image", data=parley.ids(SID),
                                    files={"image": ("x.png", b"<svg onload=alert(1)>", "image/png")})
    assert fake.status_code == 415 and fake.json()["code"] == "unsupported_media_type"
    await parley.services.sites.update_settings(
        parley.site.id, {**parley.site.settings, "upload_max_bytes": 1000})
    big = await parley.client.post("/api/v1/chat/upload-image", data=parley.ids(SID),
                                   files={"image": ("x.png", png_bytes((300, 300)) + b"\0" * 2000, "image/png")})
    assert big.status_code == 413 and big.json()["code"] == "too_large"
    missing = await parley.client.post("/api/v1/chat/upload-image", data=parley.ids(SID))
    assert missing.status_code == 400


async def test_a_huge_pixel_count_is_refused(parley):
    out = io.BytesIO()
    Image.new("1", (8000, 6000)).save(out, format="PNG")  # 48 megapixels, a few KB
    response = await parley.client.post("/api/v1/chat/upload-image", data=parley.ids(SID),
                                        files={"image": ("bomb.png", out.getvalue(), "image/png")})
    assert response.status_code == 413


async def test_unknown_site_and_bad_ids(parley):
    unknown = await parley.get("history", site_key="sk_" + "z" * 30, session_id=SID)
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_site"
    for params in ({"site_key": "nope", "session_id": SID}, parley.ids("sess_short"),
                   {"session_id": SID}, parley.ids("sess_" + "a" * 20 + "!")):
        response = await parley.get("history", **params)
        assert response.status_code == 400, params


async def test_restricted_origins_are_refused(parley):
    site = await parley.services.sites.create("Strict", ["https://shop.example.com"])
    allowed = await parley.client.get("/api/v1/chat/history", params=parley.ids(SID, site=site),
                                      headers={"Origin": "https://shop.example.com"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example.com"
    refused = await parley.client.get("/api/v1/chat/history", params=parley.ids(SID, site=site),
                                      headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and refused.json()["code"] == "origin_not_allowed"
    unnamed = await parley.client.get("/api/v1/chat/history", params=parley.ids(SID, site=site))
    assert unnamed.status_code == 403 and "sent no Origin header" in unnamed.json()["error"]


async def test_cors_preflight(parley):
    response = await parley.client.options("/api/v1/chat/stream", headers={
        "Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert response.headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
    assert response.headers["access-control-allow-headers"] == "Content-Type"
    assert int(response.headers["access-control-max-age"]) > 0
    assert "set-cookie" not in response.headers


async def test_readiness_answers_503_in_time_when_the_store_hangs(parley, monkeypatch):
    never = asyncio.Event()

    async def hung_ping() -> None:  # a database that takes connections but never answers
        await never.wait()

    monkeypatch.setattr(parley.services.store, "ping", hung_ping)
    parley.services.readiness.timeout = 0.2
    started = time.monotonic()
    response = await parley.client.get("/readyz", timeout=10)
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "store": "unreachable", "events": "ok",
                               "disk": "ok", "images": "ok"}
    assert time.monotonic() - started < 5  # the check's 0.2 s, not the client's 10


async def test_readiness_says_the_store_is_unreachable_while_another_process_holds_its_lock(parley):
    """Reads go on, but every write fails: a load balancer must stop sending visitors here."""
    store = parley.services.store
    if not isinstance(store, SQLiteStore):
        pytest.skip("an SQLite lock")
    parley.services.readiness.timeout = 0.2
    shell = sqlite3.connect(store.path, isolation_level=None)  # as a `sqlite3` shell would
    try:
        shell.execute("BEGIN EXCLUSIVE")
        locked = await parley.client.get("/readyz", timeout=10)
        assert locked.status_code == 503 and locked.json()["store"] == "unreachable"
    finally:
        shell.execute("ROLLBACK")
        shell.close()
    parley.services.readiness.timeout = 5.0  # the other checks, on a loaded machine

    async def ready() -> bool:
        return (await parley.client.get("/readyz", timeout=10)).status_code == 200

    await eventually(ready, what="ready once the lock is let go")


async def test_unknown_api_paths_and_methods_answer_json(parley):
    missing = await parley.client.get("/api/v1/chat/nope")
    assert missing.status_code == 404 and missing.json()["success"] is False
    wrong = await parley.client.get("/api/v1/chat/stream")
    assert wrong.status_code == 405 and wrong.json()["success"] is False


async def test_health_and_readiness(parley):
    assert (await parley.client.get("/healthz")).json()["status"] == "ok"
    assert (await parley.client.get("/readyz")).json() == {"status": "ok", "store": "ok", "events": "ok",
                                                            "disk": "ok", "images": "ok"}
    await parley.services.store.close()
    assert (await parley.client.get("/readyz")).status_code == 503
    down = await parley.post("email", parley.ids(SID, email="a@b.co"))
    assert down.status_code == 503 and down.json()["code"] == "unavailable"
    await parley.services.store.open()


async def test_sessions_and_sites_never_see_each_other(parley):
    await parley.ask(SID, "Do you ship to Canada?")
    await parley.services.operators.say(parley.site, SID, "private note", operator_name="Ana")
    await parley.services.operators.send_proactive(parley.site, SID, "only for you")
    other_site = await parley.services.sites.create("Another shop")
    for ids in (parley.ids(session("someone-else")), parley.ids(SID, site=other_site)):
        assert (await parley.get("history", **ids)).json()["messages"] == []
        assert (await parley.get("operator-messages", **ids)).json()["messages"] == []
        assert (await parley.get("pending-proactive", **ids)).json()["messages"] == []
        assert (await parley.post("rate", {**ids, "score": 1})).status_code == 404


async def test_a_wrong_method_says_which_to_use(parley):
    response = await parley.get("stream")
    assert response.status_code == 405
    assert response.json() == {"success": False, "error": "Use POST for /api/v1/chat/stream.",
                               "code": "method_not_allowed"}
    assert "POST" in response.headers["Allow"].split(", ")
    response = await parley.post("history", {})
    assert response.status_code == 405 and response.json()["error"] == "Use GET for /api/v1/chat/history."
    # Every endpoint, with the visitor's ids (an upload checks them before its body) and without.
    for path, method in (("stream", "POST"), ("history", "GET"), ("email", "POST"), ("contact", "POST"),
                         ("operator-messages", "GET"), ("block-status", "GET"),
                         ("pending-proactive", "GET"), ("upload-image", "POST"), ("rate", "POST"),
                         ("rate/comment", "POST"), ("config", "GET")):
        for wrong in ("GET", "PUT", "DELETE", "PATCH"):
            if wrong != method:
                for params in ({}, parley.ids(SID)):
                    response = await parley.client.request(wrong, f"/api/v1/chat/{path}", params=params)
                    assert (response.status_code, response.json()["error"]) == (
                        405, f"Use {method} for /api/v1/chat/{path}."), (wrong, path, params)


async def test_history_asks_for_a_way_to_reach_a_visitor_waiting_for_a_person(parley):
    sid = session("ask-email")
    await parley.ask(sid, "I want to talk to a human")
    assert (await parley.get("history", **parley.ids(sid))).json()["ask_email"] is True
    saved = await parley.post("contact", parley.ids(sid, phone="+1 555 123 4567"))
    assert saved.status_code == 200
    assert (await parley.get("history", **parley.ids(sid))).json()["ask_email"] is False
