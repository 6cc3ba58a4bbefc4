"""Proactive rules from the dashboard: add, edit in place (same id), remove, each audited;
agents get 403."""

from __future__ import annotations

from server.proactive import site_rules
from tests.dashboard import sign_in
from tests.harness import Parley
from tests.test_dashboard_sites import post_form


async def test_rules_are_added_edited_and_removed(parley: Parley):
    admin = await sign_in(parley, "admin@example.com")
    rules_url = f"/dashboard/sites/{parley.site_key}/rules"
    try:
        assert (await post_form(admin, rules_url, action="add", path="/pricing", delay="0",
                                text="Questions about plans?")).status_code == 302
        [rule] = site_rules(await parley.services.sites.get(parley.site_key))
        page = await admin.get(rules_url)
        assert "Questions about plans?" in page.text
        edited = await post_form(admin, rules_url, action="edit", rule_id=rule.id, path="/pricing", delay="0",
                                 text="Need help choosing a plan?")
        assert edited.status_code == 302
        [after] = site_rules(await parley.services.sites.get(parley.site_key))
        assert (after.id, after.text) == (rule.id, "Need help choosing a plan?")
        bad = await post_form(admin, rules_url, action="add", path="pricing", delay="0", text="Questions?")
        assert bad.status_code == 400 and "starts with" in bad.text
        assert 'value="pricing"' in bad.text and ">Questions?</textarea>" in bad.text  # kept to correct
        assert (await post_form(admin, rules_url, action="remove", rule_id=rule.id)).status_code == 302
        assert site_rules(await parley.services.sites.get(parley.site_key)) == []
        assert (await post_form(admin, rules_url, action="remove", rule_id=rule.id)).status_code == 400
        assert {"proactive_rule.add", "proactive_rule.edit", "proactive_rule.remove"} <= {
            e.action for e in await parley.services.audit.entries()}
    finally:
        await admin.client.aclose()
    agent = await sign_in(parley, "agent@example.com", role="agent", sites=(parley.site.id,))
    try:
        assert (await agent.get(rules_url)).status_code == 403
        assert (await post_form(agent, rules_url, action="add", path="/", delay="0", text="hi")).status_code == 403
    finally:
        await agent.client.aclose()
