"""The small things a stranger finds: odd URLs, headers, addresses, and the CLI's first minute."""

from __future__ import annotations

import logging
import re

import pytest

from server.cli import main as cli_main
from server.demo import ensure_demo_site
from tests.harness import session
from tests.test_cli_config import cli

SID = session("details")


async def test_an_unparsable_page_url_is_a_400_not_a_500(parley, caplog):
    await parley.services.rules.add(parley.site, "/pricing", 0, "Questions about plans?")
    with caplog.at_level(logging.INFO):
        for page_url in ("http://[oops/pricing", "https://shop.test:99999/pricing"):
            response = await parley.get("pending-proactive", **parley.ids(SID), page_url=page_url)
            assert response.status_code == 400, page_url
            assert response.json()["code"] == "invalid_request"
            streamed = await parley.post("stream", parley.ids(SID, message="Hi", page_url=page_url))
            assert streamed.status_code == 400
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert "Traceback" not in caplog.text
    assert SID not in ours and parley.site_key not in ours  # together they read the conversation


async def test_only_origin_and_path_of_the_page_are_kept_unless_the_site_opts_in(parley):
    page = "https://user:secret@shop.test/account/reset?token=abc123&email=a%40b.co#step2"
    await parley.ask(SID, "Do you ship to Canada?", page_url=page)
    conversation = await parley.services.store.get_conversation(parley.site.id, SID)
    assert conversation.page_url == "https://shop.test/account/reset"
    config = (await parley.get("config", site_key=parley.site_key)).json()["config"]
    assert config["full_page_urls"] is False  # the widget sends origin and path only

    await parley.services.sites.update_settings(parley.site.id, {"full_page_urls": True})
    other = session("details-full")
    await parley.ask(other, "Do you ship to Canada?", page_url=page)
    conversation = await parley.services.store.get_conversation(parley.site.id, other)
    assert conversation.page_url == page
    assert (await parley.get("config", site_key=parley.site_key)).json()["config"]["full_page_urls"]


@pytest.mark.parametrize("path", ["/uploads/x%00.png", "/widget/a%00.js", "/uploads/%00",
                                  "/widget/..%2f..%2fserver%2fconfig.py"])
async def test_odd_file_paths_are_404(parley, path):
    response = await parley.client.get(path)
    assert response.status_code in (403, 404)


@pytest.mark.parametrize("email", ["ana\x00@shop.test", "ana\x07@shop.test", "ana@shop\x1b.test",
                                   "<ana>@shop.test", 'ana"@shop.test', "ana@shop.test>",
                                   "ana\u202e@shop.test", "ana@shop\x85.test"])
async def test_email_refuses_control_and_markup_characters(parley, email):
    response = await parley.post("email", parley.ids(SID, email=email))
    assert response.status_code == 400, repr(email)
    assert response.json()["code"] == "invalid_request"


async def test_email_takes_ordinary_addresses(parley):
    for email in ("ana.b+chat@shop.example.com", "josé@exämple.de", "o'neil@shop.test"):
        response = await parley.post("email", parley.ids(SID, email=email))
        assert response.status_code == 200, email


async def test_no_version_in_the_server_header_and_no_sniffing(parley):
    for path in ("/api/v1/chat/config", "/healthz", "/widget/widget.js", "/nowhere", "/api/v1/nowhere"):
        response = await parley.client.get(path)
        assert response.headers["Server"] == "Parley", path
        assert response.headers["X-Content-Type-Options"] == "nosniff", path


async def test_html_pages_have_a_policy_and_cannot_be_framed(parley):
    await ensure_demo_site(parley.services.sites, parley.services.store)
    for path in ("/demo", "/nowhere"):
        response = await parley.client.get(path)
        assert response.headers["Content-Type"].startswith("text/html"), path
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "base-uri 'none'" in policy, path
        assert response.headers["X-Frame-Options"] == "DENY"
    demo = await parley.client.get("/demo")
    nonce = re.search(r"'nonce-([^']+)'", demo.headers["Content-Security-Policy"]).group(1)
    assert f'<script nonce="{nonce}">' in demo.text  # the page's own script still runs
    title = re.search(r"<title>(.*)</title>", demo.text).group(1)
    assert title == "Northwind Outfitters · Parley demo"


def test_site_create_prints_a_usable_embed_line(tmp_path):
    created = cli("site", "create", "--name", "Acme", "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    assert "{server}" not in created.stdout
    assert '<script src="http://127.0.0.1:8080/widget/widget.js" data-site-key="sk_' in created.stdout
    public = cli("site", "create", "--name", "Acme", "--data-dir", str(tmp_path),
                 "--public-url", "https://chat.acme.example/")
    assert '<script src="https://chat.acme.example/widget/widget.js"' in public.stdout


def test_a_command_at_the_wrong_data_directory_says_where_it_looked_and_creates_nothing(tmp_path, capsys,
                                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli_main(["operator", "say", "--site", "sk_" + "q" * 30, "--session", SID, "hi"])
    error = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "data") in error and "--data-dir" in error
    assert list(tmp_path.iterdir()) == []  # no ./data left behind
    # With a database there, an unknown key says which database it looked in.
    assert cli_main(["site", "create", "--name", "Acme", "--data-dir", "elsewhere"]) == 0
    capsys.readouterr()
    assert cli_main(["kb", "list", "--site", "sk_" + "q" * 30, "--data-dir", "elsewhere"]) == 2
    error = capsys.readouterr().err
    assert "No site has this site_key" in error and str(tmp_path / "elsewhere" / "parley.sqlite3") in error


def test_an_unwritable_data_directory_is_one_sentence_and_a_failure(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    # /proc/self is a directory nobody can create files in, root included (like a read-only mount).
    for data_dir in (str(not_a_directory), "/proc/self"):
        served = cli("serve", "--data-dir", data_dir, "--port", "0")
        assert served.returncode == 2, served.stderr
        assert "Traceback" not in served.stderr
        assert f"error: " in served.stderr and data_dir in served.stderr


async def test_cors_headers_go_only_to_origins_the_site_allows(parley):
    strict = await parley.services.sites.create("Strict", ["https://shop.example.com"])
    good, evil = {"Origin": "https://shop.example.com"}, {"Origin": "https://evil.example"}
    ids = parley.ids(SID, site=strict)

    refused = await parley.client.get("/api/v1/chat/history", params=ids, headers=evil)
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    preflight = await parley.client.options("/api/v1/chat/history", params=ids, headers=evil)
    assert preflight.status_code == 204 and "access-control-allow-origin" not in preflight.headers
    for path in ("/api/v1/chat/nowhere", "/api/v1/chat/history?site_key=sk_" + "x" * 30
                 + "&session_id=" + SID):
        missing = await parley.client.get(path, headers=evil)
        assert missing.status_code == 404 and "access-control-allow-origin" not in missing.headers
        assert (await parley.client.options(path, headers=evil)).headers.get(
            "access-control-allow-origin") is None

    allowed = await parley.client.options("/api/v1/chat/history", params=ids, headers=good)
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example.com"
    # An error after the site let the origin in is readable by the widget (it shows it).
    await parley.services.operators.block(strict, "session", SID)
    blocked = await parley.post("email", {**ids, "email": "a@b.co"}, headers=good)
    assert blocked.status_code == 403 and blocked.json()["code"] == "blocked"
    assert blocked.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert blocked.headers["vary"] == "Origin"


async def test_a_failure_is_logged_without_the_query(parley, caplog, monkeypatch):
    async def broken(visitor):
        raise RuntimeError("a bug")

    monkeypatch.setattr(parley.services.chat, "is_blocked", broken)
    with caplog.at_level(logging.INFO):
        response = await parley.get("block-status", **parley.ids(SID))
    assert response.status_code == 500 and response.json()["code"] == "internal"
    ours = [r for r in caplog.records if not r.name.startswith("httpx")]
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in ours)  # the traceback is kept
    text = "\n".join(r.getMessage() for r in ours)
    assert "/api/v1/chat/block-status" in text
    assert SID not in text and parley.site_key not in text


async def test_the_widget_is_one_file_with_the_shared_markdown_renderer_inlined(parley):
    widget = await parley.client.get("/widget/widget.js")
    renderer = await parley.client.get("/widget/markdown.js")
    for response in (widget, renderer):
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "@include" not in widget.text
    assert renderer.text.strip() in widget.text
    assert widget.text.index("var parleyMarkdown") < widget.text.index("parleyMarkdown.markdown")
    again = await parley.client.get("/widget/widget.js", headers={"If-None-Match": widget.headers["Etag"]})
    assert again.status_code == 304
