"""Proactive rules: "on /pricing, after 20 s, say ...". Kept in the site's settings, read as data.

A rule becomes a proactive message for a session the first time the widget reports being on a
matching page; it is due `delay_seconds` later and is delivered at most once per session.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from server.errors import InvalidRequest
from server.sites import SiteService
from server.store.models import Site

MAX_RULES_PER_SITE = 50
MAX_DELAY_SECONDS = 3600


@dataclass(frozen=True)
class ProactiveRule:
    id: str
    path: str
    delay_seconds: float
    text: str

    def matches(self, page_url: str) -> bool:
        """`/pricing` matches /pricing and /pricing/teams; `/` matches every page."""
        try:
            path = urlsplit(page_url).path or "/"
        except ValueError:  # "http://[oops": no page this rule knows
            return False
        prefix = self.path.rstrip("/")
        return path == self.path or path.startswith(prefix + "/")


def site_rules(site: Site) -> list[ProactiveRule]:
    rules = []
    for raw in site.setting("proactive_rules", [])[:MAX_RULES_PER_SITE]:
        try:
            rules.append(ProactiveRule(str(raw["id"]), str(raw["path"]), float(raw["delay_seconds"]),
                                       str(raw["text"])))
        except (KeyError, TypeError, ValueError):
            continue  # a hand-edited rule that makes no sense is skipped, not fatal
    return rules


class ProactiveRules:
    """Adding, listing and removing a site's rules."""

    def __init__(self, sites: SiteService) -> None:
        self.sites = sites

    @staticmethod
    def _checked(rule_id: str, path: str, delay_seconds: float, text: str) -> ProactiveRule:
        path, text = path.strip(), text.strip()
        if not path.startswith("/") or len(path) > 500:
            raise InvalidRequest("A rule's path starts with '/', e.g. /pricing.")
        if not 0 <= delay_seconds <= MAX_DELAY_SECONDS:
            raise InvalidRequest(f"A rule's delay is 0 to {MAX_DELAY_SECONDS} seconds.")
        if not text or len(text) > 1000:
            raise InvalidRequest("A rule's message is 1 to 1000 characters.")
        return ProactiveRule(rule_id, path, delay_seconds, text)

    async def add(self, site: Site, path: str, delay_seconds: float, text: str) -> ProactiveRule:
        rule = self._checked("r_" + secrets.token_hex(4), path, delay_seconds, text)
        rules = site_rules(site)
        if len(rules) >= MAX_RULES_PER_SITE:
            raise InvalidRequest(f"A site has at most {MAX_RULES_PER_SITE} rules.")
        await self._save(site, [*rules, rule])
        return rule

    async def edit(self, site: Site, rule_id: str, path: str, delay_seconds: float, text: str) -> bool:
        """Change a rule in place (same id, so visitors it already reached are not nudged again)."""
        rule = self._checked(rule_id, path, delay_seconds, text)
        rules = site_rules(site)
        if rule_id not in {r.id for r in rules}:
            return False
        await self._save(site, [rule if r.id == rule_id else r for r in rules])
        return True

    async def remove(self, site: Site, rule_id: str) -> bool:
        rules = site_rules(site)
        kept = [r for r in rules if r.id != rule_id]
        if len(kept) == len(rules):
            return False
        await self._save(site, kept)
        return True

    async def _save(self, site: Site, rules: list[ProactiveRule]) -> None:
        await self.sites.update_settings(site.id, {"proactive_rules": [asdict(r) for r in rules]})
