"""One visitor's data exported and erased (CLI and store), and the retention job."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from server.audit import CLI
from tests.harness import Parley, session
from tests.test_api_endpoints import png_bytes
from tests.test_operator_cli import cli

WORDS = "quokkafjord zebrapelican"
EMAIL = "erase-me-7f3q@example.org"
COMMENT = "marmosetlantern was helpful"


async def visitor_with_everything(parley: Parley, sid: str) -> str:
    """A visitor who asked, left an email, uploaded an image and rated: returns the upload URL."""
    await parley.ask(sid, f"Do you ship {WORDS} to Norway?")
    assert (await parley.post("email", parley.ids(sid, email=EMAIL))).status_code == 200
    upload = await parley.client.post("/api/v1/chat/upload-image", data=parley.ids(sid),
                                      files={"image": ("a.png", png_bytes((20, 20)), "image/png")})
    assert upload.status_code == 200
    assert (await parley.post("rate", parley.ids(sid, score=2))).status_code == 200
    assert (await parley.post("rate/comment", parley.ids(sid, comment=COMMENT))).status_code == 200
    return upload.json()["url"]


def traces(data_dir: Path, needles: list[str]) -> list[tuple[str, str]]:
    found = []
    for path in data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [(str(path.relative_to(data_dir)), n) for n in needles if n.encode() in data]
    return found


async def test_export_then_erase_leaves_no_trace_in_the_data_directory(parley: Parley):
    sid, kept = session("erase-me"), session("kept")
    image_url = await visitor_with_everything(parley, sid)
    await parley.ask(kept, "Do you ship to Spain?")
    data_dir = parley.services.config.data_dir
    needles = [sid, EMAIL, "quokkafjord", "zebrapelican", "marmosetlantern"]
    assert traces(data_dir, needles), "the fixture wrote nothing to find"

    code, out, err = await cli(data_dir, "visitor", "export", "--site", parley.site_key, "--session", sid)
    assert code == 0, err
    exported = json.loads(out)
    assert exported["session_id"] == sid and exported["contact"]["email"] == EMAIL
    assert exported["rating"] == {"rating": 2, "comment": COMMENT}
    assert [m["role"] for m in exported["messages"]][:2] == ["visitor", "ai"]
    assert WORDS in exported["messages"][0]["content"]
    [upload] = exported["uploads"]
    assert image_url.endswith(upload["key"]) and upload["url"].endswith(upload["key"])

    code, out, err = await cli(data_dir, "visitor", "erase", "--site", parley.site_key, "--session", sid)
    assert code == 0, err
    assert "1 upload(s)" in out
    # The server is still running, its database open: nothing of the visitor anywhere on disk.
    assert traces(data_dir, needles) == []
    assert (await parley.client.get(image_url)).status_code == 404
    history = (await parley.get("history", **parley.ids(sid))).json()["messages"]
    assert history == []
    assert len((await parley.get("history", **parley.ids(kept))).json()["messages"]) == 2
    [erased, exported_entry] = [e for e in await parley.services.audit.entries()
                                if e.action.startswith("visitor.")][:2]
    assert (erased.action, exported_entry.action) == ("visitor.erase", "visitor.export")
    assert erased.target and erased.target.startswith("sha256:") and sid not in erased.target

    code, _, err = await cli(data_dir, "visitor", "export", "--site", parley.site_key, "--session", sid)
    assert code == 2 and "no conversation" in err


async def test_the_server_erases_while_visitors_keep_talking(parley: Parley):
    """The erase inside the running process (the dashboard's path), with the log emptied."""
    sid = session("erase-in-process")
    await visitor_with_everything(parley, sid)
    await parley.services.privacy.erase(parley.site, sid, actor=CLI)
    await parley.ask(session("after"), "and now?")
    assert traces(parley.services.config.data_dir, [sid, EMAIL, "quokkafjord", "marmosetlantern"]) == []


async def test_retention_erases_old_conversations_with_their_uploads(parley: Parley):
    sid = session("old")
    image_url = await visitor_with_everything(parley, sid)
    privacy, sites = parley.services.privacy, parley.services.sites
    # No retention set: nothing goes, however old.
    later = datetime.now(timezone.utc) + timedelta(days=400)
    assert await privacy.apply_retention(await sites.list(), actor=CLI, now=later) == 0
    await parley.services.sites.update_settings(parley.site.id, {"retention_days": 30})
    soon = datetime.now(timezone.utc) + timedelta(days=29)
    assert await privacy.apply_retention(await sites.list(), actor=CLI, now=soon) == 0
    assert (await parley.client.get(image_url)).status_code == 200
    await parley.ask(session("old-too"), "zebrapelican again")
    past_retention = datetime.now(timezone.utc) + timedelta(days=31)
    assert await privacy.apply_retention(await sites.list(), actor=CLI, now=past_retention) == 2
    assert traces(parley.services.config.data_dir, [sid, EMAIL, "quokkafjord", "zebrapelican"]) == []
    assert await parley.services.store.get_conversation(parley.site.id, sid) is None
    assert (await parley.client.get(image_url)).status_code == 404
    assert any(e.action == "retention.erase" for e in await parley.services.audit.entries())
