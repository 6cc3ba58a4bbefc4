"""Proactive rules: "on /pricing after N seconds" reaches the visitor once, on time."""

from __future__ import annotations

import time

import pytest

from server.errors import InvalidRequest
from tests.harness import session

SID = session("rules")


async def site_with_rule(parley, path: str, delay: float, text: str):
    await parley.services.rules.add(parley.site, path, delay, text)
    return await parley.services.sites.get(parley.site_key)


async def test_a_rule_is_delivered_on_a_matching_page_once(parley):
    await site_with_rule(parley, "/pricing", 0, "Questions about plans?")
    elsewhere = (await parley.get("pending-proactive", **parley.ids(SID),
                                  page_url="https://shop.test/about")).json()
    assert elsewhere["messages"] == []
    first = (await parley.get("pending-proactive", **parley.ids(SID),
                              page_url="https://shop.test/pricing/teams?x=1")).json()["messages"]
    assert [(m["content"], m["from"]) for m in first] == [("Questions about plans?", "rule")]
    acked = (await parley.get("pending-proactive", **parley.ids(SID), after=first[0]["id"],
                              page_url="https://shop.test/pricing")).json()
    assert acked["messages"] == []  # acknowledged, and never made again for this session
    other = (await parley.get("pending-proactive", **parley.ids(session("rules-2")),
                              page_url="https://shop.test/pricing")).json()
    assert len(other["messages"]) == 1


async def test_a_delayed_rule_wakes_a_held_request_when_it_falls_due(parley):
    await site_with_rule(parley, "/", 0.4, "Still looking?")
    started = time.monotonic()
    body = (await parley.get("pending-proactive", **parley.ids(SID), wait=5,
                             page_url="https://shop.test/")).json()
    waited = time.monotonic() - started
    assert [m["content"] for m in body["messages"]] == ["Still looking?"]
    assert 0.35 <= waited < 4.5  # woken by the rule falling due, not by the 5 s wait running out


async def test_a_delayed_rule_is_not_shown_early(parley):
    await site_with_rule(parley, "/", 30, "Later")
    body = (await parley.get("pending-proactive", **parley.ids(SID), page_url="https://shop.test/")).json()
    assert body["messages"] == []


async def test_rules_are_managed_from_the_cli_with_checks(parley):
    rules = parley.services.rules
    rule = await rules.add(parley.site, "/pricing", 5, "Hi")
    site = await parley.services.sites.get(parley.site_key)
    assert await rules.remove(site, rule.id) is True
    site = await parley.services.sites.get(parley.site_key)
    assert await rules.remove(site, rule.id) is False
    for path, delay, text in (("pricing", 1, "x"), ("/p", -1, "x"), ("/p", 1, " ")):
        with pytest.raises(InvalidRequest):
            await rules.add(site, path, delay, text)


async def test_settings_changes_from_two_places_are_both_kept(parley):
    stale = parley.site  # another process read the site before the rule was added
    await parley.services.rules.add(parley.site, "/pricing", 0, "Hi")
    await parley.services.sites.update_settings(stale.id, {"greeting": "Hello there"})
    site = await parley.services.sites.get(parley.site_key)
    assert site.settings["greeting"] == "Hello there"
    assert [r["path"] for r in site.settings["proactive_rules"]] == ["/pricing"]
