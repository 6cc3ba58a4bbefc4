"""The operators page (admins): add, disable, reset a password, assign sites, change role; never
without an admin; agents get 403."""

from __future__ import annotations

import pytest

from tests.dashboard import Operator, browser, login_form, sign_in
from tests.harness import Parley, session
from tests.test_dashboard_sites import admin, post_form  # noqa: F401 - admin is a fixture

SID = session("leaving")



async def test_admins_manage_operators(parley: Parley, admin: Operator):
    added = await post_form(admin, "/dashboard/operators", action="add", email="Bea@Example.com", name="Bea",
                            role="agent", password="a long password 1", site=str(parley.site.id))
    assert added.status_code == 302
    bea = await parley.services.store.get_operator_by_email("bea@example.com")
    assert bea and bea.role == "agent" and bea.site_ids == (parley.site.id,)
    page = await admin.get("/dashboard/operators")
    assert "bea@example.com" in page.text
    ids = {"operator_id": str(bea.id)}
    assert "Answers no site yet" not in (await admin.get("/dashboard/operators")).text
    assert (await post_form(admin, "/dashboard/operators", action="sites", **ids)).status_code == 302
    assert (await parley.services.store.get_operator(bea.id)).site_ids == ()
    # An agent with no site would sign in to an empty inbox: the page says so beside them.
    assert "Answers no site yet" in (await admin.get("/dashboard/operators")).text
    await post_form(admin, "/dashboard/operators", action="role", role="admin", **ids)
    assert (await parley.services.store.get_operator(bea.id)).role == "admin"
    short = await post_form(admin, "/dashboard/operators", action="password", password="short", **ids)
    assert short.status_code == 400
    await post_form(admin, "/dashboard/operators", action="password", password="another password 2", **ids)
    client = browser(parley)
    try:
        assert (await login_form(client, "bea@example.com", "another password 2")).status_code == 302
        await post_form(admin, "/dashboard/operators", action="disable", **ids)
        assert (await client.get("/dashboard/visitors")).status_code == 302  # signed out at once
        assert (await login_form(client, "bea@example.com", "another password 2")).status_code == 401
    finally:
        await client.aclose()
    actions = {e.action for e in await parley.services.audit.entries()}
    assert {"operator.add", "operator.sites", "operator.role", "operator.password_reset",
            "operator.disable"} <= actions


async def test_a_refused_new_operator_keeps_what_was_typed_but_the_password(parley: Parley, admin: Operator):
    refused = await post_form(admin, "/dashboard/operators", action="add", email="cy@example.com",
                              name="Cy Typed", role="admin", password="short", site=str(parley.site.id))
    assert refused.status_code == 400 and "at least 10 characters" in refused.text
    assert 'value="cy@example.com"' in refused.text and 'value="Cy Typed"' in refused.text
    assert '<option value="admin" selected>' in refused.text
    assert f'value="{parley.site.id}" checked' in refused.text
    assert "short" not in refused.text.split("Add an operator")[1]


async def test_a_password_easy_to_guess_is_refused_with_why(parley: Parley, admin: Operator):
    for password, why in (("1234567890", "common password"), ("aaaaaaaaaaaa", "Repeats"),
                          ("qwertyuiop", "common password"), ("dee@example.com", "")):
        refused = await post_form(admin, "/dashboard/operators", action="add", email="dee@example.com",
                                  name="Dee Ward", role="agent", password=password)
        assert refused.status_code == 400 and "too easy to guess" in refused.text, password
        assert why in refused.text
    added = await post_form(admin, "/dashboard/operators", action="add", email="dee@example.com",
                            name="Dee Ward", role="agent", password="violet kettle harbour 7")
    assert added.status_code in (200, 302)
    assert await parley.services.store.get_operator_by_email("dee@example.com") is not None


async def test_a_mistyped_email_is_named_as_typed(parley: Parley, admin: Operator):
    refused = await post_form(admin, "/dashboard/operators", action="add", email="cy@example",
                              name="Cy", role="agent", password="a long enough password")
    assert refused.status_code == 400
    assert "“cy@example” is not a valid email address." in refused.text  # not "'email' is not ..."


async def test_the_last_admin_stays_an_admin(parley: Parley, admin: Operator):
    ids = {"operator_id": str(admin.id)}
    demoted = await post_form(admin, "/dashboard/operators", action="role", role="agent", **ids)
    assert demoted.status_code == 409 and "last admin" in demoted.text
    disabled = await post_form(admin, "/dashboard/operators", action="disable", **ids)
    assert disabled.status_code == 409
    assert (await parley.services.store.get_operator(admin.id)).role == "admin"


async def test_agents_get_403_on_operators(parley: Parley, admin: Operator):
    agent = await sign_in(parley, "agent@example.com", role="agent", sites=(parley.site.id,))
    try:
        assert (await agent.get("/dashboard/operators")).status_code == 403
        promoted = await post_form(agent, "/dashboard/operators", action="role", role="admin",
                                   operator_id=str(agent.id))
        assert promoted.status_code == 403
        assert (await parley.services.store.get_operator(agent.id)).role == "agent"
    finally:
        await agent.client.aclose()


@pytest.mark.parametrize("action", ["disable", "sites"])
async def test_an_agents_taken_over_chats_go_back_to_the_team_when_they_leave(
        parley: Parley, admin: Operator, action: str):
    bo = await sign_in(parley, "bo@example.com", "agent", (parley.site.id,))
    try:
        await parley.ask(SID, "Can a person help me?")
        conversation = await parley.services.store.get_conversation(parley.site.id, SID)
        assert (await bo.act(conversation.id, "takeover")).status_code == 200
        # Disabled, or no longer on this site (the sites form sent with none ticked).
        left = await post_form(admin, "/dashboard/operators", action=action, operator_id=str(bo.id))
        assert left.status_code == 302
        after = await parley.services.store.get_conversation(parley.site.id, SID)
        assert (after.mode, after.assignee_id, after.handoff_reason) == ("ai", None, "operator_lost_access")
        # So the visitor's next message is answered again.
        events = await parley.ask(SID, "Do you ship to Canada?")
        assert events[-1]["meta"]["mode"] == "ai" and events[-1]["meta"]["reply_id"] is not None
    finally:
        await bo.client.aclose()
