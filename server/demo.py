"""The demo site: a fictional shop with a small knowledge base, so a fresh clone answers questions."""

from __future__ import annotations

from pathlib import Path

from server.knowledge import KnowledgeService
from server.store.base import Store
from server.store.models import Site
from server.sites import SiteService

DEMO_SITE_NAME = "Demo: Northwind Outfitters"
DEMO_KB_DIR = Path(__file__).resolve().parent / "demo_kb"


async def ensure_demo_site(sites: SiteService, store: Store) -> tuple[Site, bool]:
    """The demo site, created with its knowledge base the first time. True when just created."""
    for site in await sites.list():
        if site.name == DEMO_SITE_NAME:
            return site, False
    site = await sites.create(DEMO_SITE_NAME, settings={
        "title": "Northwind help",
        "greeting": "Hi! I'm Northwind's assistant. Ask me about shipping, returns or sizes.",
    })
    knowledge = KnowledgeService(store)
    for path in sorted(DEMO_KB_DIR.glob("*.md")):
        await knowledge.add_file(site, path, url=f"/demo#{path.stem}")
    return site, True
