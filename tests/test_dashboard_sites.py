"""The admins' site pages over HTTP: settings the widget then shows, the key rotated, one visitor's
data exported and erased; agents get 403 on all of it."""

from __future__ import annotations

import json
import re
from typing import AsyncIterator

import httpx
import pytest

from tests.dashboard import Operator, sign_in
from tests.harness import Parley, session


@pytest.fixture
async def admin(parley: Parley) -> AsyncIterator[Operator]:
    operator = await sign_in(parley, "admin@example.com")
    yield operator
    await operator.client.aclose()


@pytest.fixture
async def agent(parley: Parley) -> AsyncIterator[Operator]:
    operator = await sign_in(parley, "agent@example.com", role="agent", sites=(parley.site.id,))
    yield operator
    await operator.client.aclose()


async def post_form(who: Operator, target: str, /, **fields: str) -> httpx.Response:
    return await who.client.post(target, data={"_xsrf": who.xsrf, **fields})


SETTINGS = {"name": "Test shop", "origins": "", "title": "Ask Ana", "greeting": "Olá! Posso ajudar?",
            "color": "#aa3300", "position": "left", "lang": "pt-BR", "upload_mb": "2",
            "retention_days": "90"}


async def test_an_admin_edits_a_site_and_the_widget_sees_it(parley: Parley, admin: Operator):
    page = await admin.get(f"/dashboard/sites/{parley.site_key}")
    assert page.status_code == 200 and parley.site_key in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text
    saved = await post_form(admin, f"/dashboard/sites/{parley.site_key}", **SETTINGS)
    assert saved.status_code == 302
    config = (await parley.get("config", site_key=parley.site_key)).json()["config"]
    assert (config["title"], config["greeting"], config["color"], config["position"], config["lang"]) == (
        "Ask Ana", "Olá! Posso ajudar?", "#aa3300", "left", "pt-BR")
    assert config["upload_max_bytes"] == 2 * 1024 * 1024
    site = await parley.services.sites.get(parley.site_key)
    assert site.settings["retention_days"] == 90
    bad = await post_form(admin, f"/dashboard/sites/{parley.site_key}", **{**SETTINGS, "color": "red;x"})
    assert bad.status_code == 400 and "hex colour" in bad.text
    origins = await post_form(admin, f"/dashboard/sites/{parley.site_key}",
                              **{**SETTINGS, "origins": "https://Shop.example.com/path\nnot a url"})
    assert origins.status_code == 400
    [entry] = [e for e in await parley.services.audit.entries() if e.action == "site.settings"]
    assert "color" in entry.detail["changed"]
    # No XSRF token: refused.
    forged = await admin.client.post(f"/dashboard/sites/{parley.site_key}", data=SETTINGS)
    assert forged.status_code == 403


async def test_a_rotated_key_replaces_the_old_one(parley: Parley, admin: Operator):
    old = parley.site_key
    rotated = await post_form(admin, f"/dashboard/sites/{old}", action="rotate")
    assert rotated.status_code == 302
    new = re.search(r"/dashboard/sites/(sk_[A-Za-z0-9_-]+)", rotated.headers["location"]).group(1)
    assert new != old
    assert (await parley.get("config", site_key=old)).status_code == 404
    assert (await parley.get("config", site_key=new)).status_code == 200
    page = await admin.get(f"/dashboard/sites/{new}")
    assert f'data-site-key="{new}"' in page.text.replace("&#34;", '"').replace("&quot;", '"')


async def test_admins_create_sites(parley: Parley, admin: Operator):
    created = await post_form(admin, "/dashboard/sites", name="Second shop")
    assert created.status_code == 302
    listing = await admin.get("/dashboard/sites")
    assert "Second shop" in listing.text and "Test shop" in listing.text
    assert (await post_form(admin, "/dashboard/sites", name=" ")).status_code == 400


async def test_export_and_erase_from_the_dashboard(parley: Parley, admin: Operator):
    sid = session("dash-erase")
    await parley.ask(sid, "my order 12345 is late")
    path = f"/dashboard/sites/{parley.site_key}/visitor"
    exported = await post_form(admin, path, session=sid, action="export")
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    assert json.loads(exported.text)["messages"][0]["content"] == "my order 12345 is late"
    unconfirmed = await post_form(admin, path, session=sid, action="erase", confirm="")
    assert unconfirmed.status_code == 400
    erased = await post_form(admin, path, session=sid, action="erase", confirm=sid)
    assert erased.status_code == 302
    assert await parley.services.store.get_conversation(parley.site.id, sid) is None
    assert (await post_form(admin, path, session=sid, action="export")).status_code == 404


async def test_agents_get_403_on_site_settings_and_visitor_data(parley: Parley, agent: Operator):
    assert (await agent.get("/dashboard/sites")).status_code == 403
    assert (await agent.get(f"/dashboard/sites/{parley.site_key}")).status_code == 403
    for path, fields in ((f"/dashboard/sites/{parley.site_key}", SETTINGS),
                         (f"/dashboard/sites/{parley.site_key}", {"action": "rotate"}),
                         (f"/dashboard/sites/{parley.site_key}/visitor",
                          {"session": session("x"), "action": "export"}),
                         ("/dashboard/sites", {"name": "Mine"})):
        assert (await post_form(agent, path, **fields)).status_code == 403, path
    assert (await parley.services.sites.get(parley.site_key)).settings.get("title") != "Ask Ana"
    nav = await agent.get("/dashboard/visitors")
    assert 'href="/dashboard/sites"' not in nav.text
