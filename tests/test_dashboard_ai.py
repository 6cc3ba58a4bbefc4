"""The AI settings page: the key write-only and masked, changes audited, Test connection against a
real streaming server (the fake OpenAI-compatible one) and its errors; agents get 403."""

from __future__ import annotations

from server.ai.caps import DEFAULT_REPLIES_PER_SESSION_HOUR, Caps
from server.ai.settings import updated_ai_settings
from tests.dashboard import Operator, sign_in
from tests.fake_openai import API_KEY, FakeOpenAI, Plan
from tests.harness import Parley, session
from tests.test_dashboard_sites import admin, post_form  # noqa: F401 - admin is a fixture

KEY = "sk-test-secret-key-0123456789abcd"


def ai_form(fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    return {"base_url": fake.base_url, "model": "fake-model", "api_key": KEY, "temperature": "0.3",
            "handoff_phrases": "human please\nreal person", "redact_pii": "on",
            "replies_per_session_hour": "10", **extra}


async def test_the_key_is_write_only_and_the_connection_is_tested(parley: Parley, admin: Operator,
                                                                  fake_openai: FakeOpenAI):
    path = f"/dashboard/sites/{parley.site_key}/ai"
    assert (await post_form(admin, path, **ai_form(fake_openai))).status_code == 302
    page = await admin.get(path)
    assert page.status_code == 200 and KEY not in page.text and "…abcd" in page.text
    site = await parley.services.sites.get(parley.site_key)
    ai = site.settings["ai"]
    assert ai["api_key"] == KEY and ai["model"] == "fake-model" and ai["redact_pii"] is True
    assert ai["handoff_phrases"] == ["human please", "real person"] and ai["caps"]["replies_per_session_hour"] == 10
    # The caps left empty are the defaults, not "no limit".
    assert ai["caps"] == {"replies_per_session_hour": 10}
    await post_form(admin, path, **ai_form(fake_openai, api_key="", replies_per_session_hour=""))
    site = await parley.services.sites.get(parley.site_key)
    assert Caps.for_site(site).replies_per_session_hour == DEFAULT_REPLIES_PER_SESSION_HOUR
    # Saving again with the key field empty keeps the key.
    await post_form(admin, path, **ai_form(fake_openai, api_key="", temperature="0.5"))
    assert (await parley.services.sites.get(parley.site_key)).settings["ai"]["api_key"] == KEY
    [entry, *_] = [e for e in await parley.services.audit.entries() if e.action == "site.ai_settings"]
    assert "temperature" in entry.detail["changed"] and KEY not in str(entry.detail)

    fake_openai.script(Plan(tokens=["It", " works", "."]))
    tested = await post_form(admin, path, action="test")
    assert tested.status_code == 200
    assert "first token after" in tested.text and "It works." in tested.text
    assert fake_openai.requests[-1]["stream"] is True

    fake_openai.script(Plan(status=401, error_body='{"error": {"message": "bad key ' + KEY + '"}}'))
    failed = await post_form(admin, path, action="test")
    assert "answered 401" in failed.text and "bad key" in failed.text and KEY not in failed.text

    bad = await post_form(admin, path, **ai_form(fake_openai, temperature="7"))
    assert bad.status_code == 400 and "between 0 and 2" in bad.text


async def test_offline_sites_say_so_and_agents_are_refused(parley: Parley, admin: Operator):
    path = f"/dashboard/sites/{parley.site_key}/ai"
    offline = await post_form(admin, path, action="test")
    assert "offline answerer" in offline.text
    agent = await sign_in(parley, "agent@example.com", role="agent", sites=(parley.site.id,))
    try:
        assert (await agent.get(path)).status_code == 403
        assert (await post_form(agent, path, action="test")).status_code == 403
    finally:
        await agent.client.aclose()


async def test_the_servers_key_and_a_stored_key_go_only_where_they_were_given_for(
        ai_parley: Parley, fake_openai: FakeOpenAI):
    site = ai_parley.site
    # The same fake under another name: an address the server's key was not given for.
    elsewhere = fake_openai.base_url.replace("127.0.0.1", "localhost")
    await ai_parley.services.sites.update_settings(site.id, {**site.settings, "ai": {"base_url": elsewhere}})
    await ai_parley.ask(session("elsewhere"), "Do you ship to Canada?")
    assert "authorization" not in {k.lower() for k in fake_openai.calls[-1].headers}
    # A key stored for one address is forgotten when the address changes without a new key.
    stored = updated_ai_settings({}, {"base_url": fake_openai.base_url, "api_key": "sk-site-key-1234567"})
    assert stored["api_key"] == "sk-site-key-1234567"
    assert "api_key" not in updated_ai_settings(stored, {"base_url": elsewhere})
    assert updated_ai_settings(stored, {"base_url": fake_openai.base_url})["api_key"] == "sk-site-key-1234567"
    # The server's own address keeps the server's key.
    await ai_parley.services.sites.update_settings(site.id, {**site.settings, "ai": {"model": "fake-model"}})
    await ai_parley.ask(session("home"), "Do you ship to Canada?")
    assert fake_openai.calls[-1].headers.get("Authorization") == f"Bearer {API_KEY}"
