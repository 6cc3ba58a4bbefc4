"""Signing in to the dashboard: accounts, the setup link, sessions, limits, XSRF, who sees what."""

from __future__ import annotations

import time
from typing import AsyncIterator, Awaitable, Callable

import pyotp
import httpx
import pytest

from server.accounts import MAX_FAILURES_PER_ACCOUNT
from tests.dashboard import PASSWORD, Operator, add_operator, browser, login_form, sign_in
from tests.harness import Parley, session

SID = session("dash-auth")
SignIn = Callable[..., Awaitable[Operator]]


@pytest.fixture
async def signed_in(parley: Parley) -> AsyncIterator[SignIn]:
    operators: list[Operator] = []

    async def make(email: str, role: str = "admin", sites: tuple[int, ...] = ()) -> Operator:
        operator = await sign_in(parley, email, role, sites)
        operators.append(operator)
        return operator

    yield make
    for operator in operators:
        await operator.client.aclose()


async def test_the_setup_link_creates_the_first_admin_once(parley: Parley):
    token = await parley.services.accounts.setup_token()
    assert token
    async with browser(parley) as client:
        page = await client.get("/dashboard/setup", params={"token": token})
        assert page.status_code == 200 and 'name="password"' in page.text
        form = {"token": token, "email": "Ana@Example.com", "name": "Ana", "password": PASSWORD,
                "password_again": PASSWORD, "_xsrf": client.cookies["_xsrf"]}
        created = await client.post("/dashboard/setup", data=form)
        assert created.status_code == 302 and created.headers["location"] == "/dashboard/"
        assert (await client.get("/dashboard/")).status_code == 200  # signed in already
        again = await client.post("/dashboard/setup", data={**form, "email": "eve@example.com"})
        assert again.status_code == 400
    admins = await parley.services.store.list_operators()
    assert [(o.email, o.role) for o in admins] == [("ana@example.com", "admin")]
    assert await parley.services.accounts.setup_token() is None  # no new link once someone exists
    async with browser(parley) as client:
        used = await client.get("/dashboard/setup", params={"token": token})
        assert used.status_code == 404
        assert 'href="/dashboard/login"' in used.text and "Restart the server" not in used.text


async def test_a_mistake_in_the_setup_form_says_what_and_keeps_the_link(parley: Parley):
    token = await parley.services.accounts.setup_token()
    async with browser(parley) as client:
        await client.get("/dashboard/setup", params={"token": token})  # sets the XSRF cookie
        form = {"token": token, "email": "ana@example.com", "name": "Ana", "password": PASSWORD,
                "password_again": PASSWORD, "_xsrf": client.cookies["_xsrf"]}
        for field, value, error in (("name", "   ", "A display name is 1 to 100 characters."),
                                    ("email", "ana@", "email"),
                                    ("password", "password123", "too easy to guess")):
            wrong = {**form, field: value, "password_again": value if field == "password" else PASSWORD}
            refused = await client.post("/dashboard/setup", data=wrong)
            assert refused.status_code == 400 and error in refused.text
            assert 'name="password"' in refused.text and "expired" not in refused.text  # the form again
        created = await client.post("/dashboard/setup", data=form)
        assert created.status_code == 302
    assert [o.email for o in await parley.services.store.list_operators()] == ["ana@example.com"]


async def test_an_expired_setup_link_says_a_restart_makes_a_new_one(parley: Parley):
    async with browser(parley) as client:
        page = await client.get("/dashboard/setup", params={"token": "no-such-token"})
    assert page.status_code == 404 and "Restart the server for a new link" in page.text


async def test_unknown_dashboard_addresses_get_the_dashboards_own_404(parley: Parley):
    async with browser(parley) as client:
        page = await client.get("/dashboard/nope")
        api = await client.get("/dashboard/api/nope")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "There is no such page in the dashboard." in page.text and "/dashboard/static/" in page.text
    assert api.status_code == 404 and api.json()["code"] == "not_found"


async def test_wrong_credentials_get_one_generic_answer(parley: Parley):
    await add_operator(parley, "ana@example.com")
    async with browser(parley) as client:
        wrong_password = await login_form(client, "ana@example.com", "not the password")
        no_such_user = await login_form(client, "nobody@example.com", PASSWORD)
    for response in (wrong_password, no_such_user):
        assert response.status_code == 401
        assert "Wrong email or password." in response.text
        assert "parley_session" not in response.headers.get("set-cookie", "")


async def test_the_session_cookie_is_httponly_lax_and_secure_behind_https(parley: Parley):
    await add_operator(parley, "ana@example.com")

    async def xsrf_cookie() -> str:
        async with httpx.AsyncClient(base_url=parley.base_url) as fresh:  # no cookie yet
            page = await fresh.get("/dashboard/login")
        return next(c for c in page.headers.get_list("set-cookie") if c.startswith("_xsrf="))

    assert "Secure" not in await xsrf_cookie()
    async with browser(parley) as client:
        response = await login_form(client, "ana@example.com", PASSWORD)
        cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("parley_session="))
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/dashboard" in cookie
        assert "Secure" not in cookie
    parley.services.config = __import__("dataclasses").replace(
        parley.services.config, public_url="https://chat.example.com")
    assert "Secure" in await xsrf_cookie()  # the form's token too
    async with browser(parley) as client:
        await client.get("/dashboard/login")
        token = client.cookies.get("_xsrf")
        # This test talks plain HTTP, over which a client sends no Secure cookie back: by hand.
        response = await client.post("/dashboard/login", headers={"Cookie": f"_xsrf={token}"}, data={
            "email": "ana@example.com", "password": PASSWORD, "_xsrf": token})
        cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("parley_session="))
        assert "Secure" in cookie


async def test_failed_sign_ins_are_limited_per_account_in_the_store(parley: Parley):
    await add_operator(parley, "ana@example.com")
    async with browser(parley) as client:
        for _ in range(MAX_FAILURES_PER_ACCOUNT):
            assert (await login_form(client, "ana@example.com", "guess")).status_code == 401
        # Even the right password is refused now, from any address: the count is in the store.
        refused = await login_form(client, "ana@example.com", PASSWORD, **{"X-Real-Ip": "10.9.9.9"})
        assert refused.status_code == 429 and "Too many" in refused.text
    assert await parley.services.store.count_login_failures("account:ana@example.com", 0) == \
        MAX_FAILURES_PER_ACCOUNT


async def test_signed_out_pages_redirect_and_the_api_and_feed_answer_401(parley: Parley, caplog):
    async with browser(parley) as client:
        page = await client.get("/dashboard/c/1")
        assert page.status_code == 302
        assert page.headers["location"].startswith("/dashboard/login?next=")
        assert "finish() called twice" not in caplog.text
        for path in ("/dashboard/api/inbox", "/dashboard/events", "/dashboard/api/conversations/1"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.json()["code"] == "unauthorized"


async def test_after_sign_in_only_dashboard_paths_are_followed(parley: Parley, signed_in: SignIn):
    ana = await signed_in("ana@example.com")
    for asked, followed in (("/dashboard/c/7", "/dashboard/c/7"), ("//evil.example/x", "/dashboard/"),
                            ("https://evil.example/dashboard/", "/dashboard/"), ("/dashboard\\..", "/dashboard/"),
                            ("/dashboard/\r\nX-Injected: 1", "/dashboard/")):
        response = await ana.client.get("/dashboard/login", params={"next": asked})
        assert (response.status_code, response.headers.get("location")) == (302, followed), asked


async def test_a_post_without_the_xsrf_token_fails(parley: Parley, signed_in: SignIn):
    ana = await signed_in("ana@example.com")
    conversation = await parley.services.store.ensure_conversation(parley.site.id, SID, {})
    refused = await ana.act(conversation.id, "takeover", xsrf=False)
    assert refused.status_code == 403
    assert (await parley.services.store.get_conversation_by_id(conversation.id)).mode == "ai"
    async with browser(parley) as client:  # the sign-in form too (no login CSRF)
        await client.get("/dashboard/login")
        response = await client.post("/dashboard/login", data={"email": "a@b.co", "password": "x"})
        assert response.status_code == 403


async def test_logout_a_password_change_or_disabling_ends_sessions_at_once(parley: Parley,
                                                                           signed_in: SignIn):
    accounts = parley.services.accounts
    ana = await signed_in("ana@example.com")
    bob = await signed_in("bob@example.com")
    cid = await signed_in("cid@example.com")
    assert (await ana.api("inbox")).status_code == 200
    await accounts.set_disabled(await accounts.get_by_email("ana@example.com"), True)
    assert (await ana.api("inbox")).status_code == 401
    assert (await login_form(ana.client, "ana@example.com", PASSWORD)).status_code == 401
    await accounts.set_password(await accounts.get_by_email("bob@example.com"), "a brand new password")
    assert (await bob.api("inbox")).status_code == 401
    logout = await cid.client.post("/dashboard/logout", data={"_xsrf": cid.xsrf})
    assert logout.status_code == 302
    assert (await cid.api("inbox")).status_code == 401


async def test_an_idle_session_ends(parley: Parley, signed_in: SignIn):
    ana = await signed_in("ana@example.com")
    await signed_in("bob@example.com")
    assert (await ana.api("inbox")).status_code == 200
    parley.services.accounts.idle_timeout = 30
    for hashed in await _session_hashes(parley):
        await parley.services.store.touch_operator_session(hashed, time.time() - 60)
    assert (await ana.api("inbox")).status_code == 401
    assert len(await _session_hashes(parley)) == 1  # Bob's, idle too but not asked for yet
    await parley.services.accounts.forget_stale()  # housekeeping removes it
    assert await _session_hashes(parley) == []


async def _session_hashes(parley: Parley) -> list[str]:
    store = parley.services.store
    rows = await store._run(store._all, "SELECT token_hash FROM operator_sessions")  # type: ignore[attr-defined]
    return [r[0] for r in rows]


async def test_agents_see_only_their_sites_and_others_answer_404(parley: Parley, signed_in: SignIn):
    other_site = await parley.services.sites.create("Other shop")
    mine = await parley.services.store.ensure_conversation(parley.site.id, SID, {})
    theirs = await parley.services.store.ensure_conversation(other_site.id, session("other"), {})
    for conversation in (mine, theirs):
        await parley.services.store.add_message(conversation.id, "visitor", "hello there")
    agent = await signed_in("agent@example.com", "agent", (parley.site.id,))
    listed = (await agent.api("inbox")).json()["conversations"]
    assert [c["id"] for c in listed] == [mine.id]
    assert (await agent.api(f"conversations/{mine.id}")).status_code == 200
    assert (await agent.api(f"conversations/{theirs.id}")).status_code == 404
    assert (await agent.get(f"/dashboard/c/{theirs.id}")).status_code == 404
    for action in ("takeover", "reply", "note", "block", "close"):
        response = await agent.act(theirs.id, action, {"text": "hi"})
        assert response.status_code == 404, action
    assert (await parley.services.store.get_conversation_by_id(theirs.id)).mode == "ai"
    assert (await agent.get("/dashboard/audit")).status_code == 403  # admins only
    admin = await signed_in("admin@example.com")
    assert len((await admin.api("inbox")).json()["conversations"]) == 2
    assert (await admin.get("/dashboard/audit")).status_code == 200


async def test_two_factor_sign_in_needs_the_code_or_a_recovery_code(parley: Parley):
    accounts = parley.services.accounts
    await add_operator(parley, "ana@example.com")
    operator = await accounts.get_by_email("ana@example.com")
    secret = accounts.new_totp_secret()
    recovery = await accounts.enable_totp(operator, secret, pyotp.TOTP(secret).now())
    async with browser(parley) as client:
        response = await login_form(client, "ana@example.com", PASSWORD)
        assert response.headers["location"].startswith("/dashboard/login/code")
        assert (await client.get("/dashboard/api/inbox")).status_code == 401  # not yet
        wrong = await client.post("/dashboard/login/code",
                                  data={"code": "000000", "_xsrf": client.cookies["_xsrf"]})
        assert wrong.status_code == 401
        right = await client.post("/dashboard/login/code",
                                  data={"code": recovery[0], "_xsrf": client.cookies["_xsrf"]})
        assert right.status_code == 302
        assert (await client.get("/dashboard/api/inbox")).status_code == 200
    assert len((await accounts.get_by_email("ana@example.com")).recovery_codes) == len(recovery) - 1


async def test_dashboard_pages_carry_the_safety_headers(parley: Parley, signed_in: SignIn):
    ana = await signed_in("ana@example.com")
    for path in ("/dashboard/", "/dashboard/login", "/dashboard/visitors"):
        response = await ana.get(path)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "object-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
        assert "<script>" not in response.text and " onclick=" not in response.text
    # The widget's API stays cookie-less.
    assert "set-cookie" not in (await parley.get("history", **parley.ids(SID))).headers


async def test_the_account_page_changes_the_password_and_turns_two_factor_on(parley: Parley,
                                                                             signed_in: SignIn):
    import re

    ana = await signed_in("ana@example.com")
    form = {"_xsrf": ana.xsrf}
    started = await ana.client.post("/dashboard/account", data={**form, "action": "totp_start"})
    secret = re.search(r'name="secret" value="([A-Z2-7]+)"', started.text).group(1)
    wrong = await ana.client.post("/dashboard/account", data={
        **form, "action": "totp_confirm", "secret": secret, "code": "000000"})
    assert wrong.status_code == 400
    confirmed = await ana.client.post("/dashboard/account", data={
        **form, "action": "totp_confirm", "secret": secret, "code": pyotp.TOTP(secret).now()})
    assert confirmed.status_code == 200 and "recovery codes" in confirmed.text
    assert (await parley.services.accounts.get_by_email("ana@example.com")).totp_secret == secret

    refused = await ana.client.post("/dashboard/account", data={
        **form, "action": "password", "current": "not it", "password": "a new password 1",
        "password_again": "a new password 1"})
    assert refused.status_code == 400
    changed = await ana.client.post("/dashboard/account", data={
        **form, "action": "password", "current": PASSWORD, "password": "a new password 1",
        "password_again": "a new password 1"})
    assert changed.status_code == 302
    assert "password is changed" in (await ana.client.get(changed.headers["location"])).text
    assert (await ana.api("inbox")).status_code == 401  # every session ended, this one too
    actions = [e.action for e in await parley.services.audit.entries()]
    assert "two_factor_on" in actions and "password_change" in actions


async def test_an_agent_sees_colleagues_by_name_only(parley: Parley, signed_in: SignIn):
    await signed_in("ana@example.com")
    bo = await signed_in("bo@example.com", "agent", (parley.site.id,))
    me = (await bo.client.get("/dashboard/api/me")).json()
    assert me["operator"]["email"] == "bo@example.com"
    assert len(me["operators"]) == 2 and all(set(o) == {"id", "name"} for o in me["operators"])
