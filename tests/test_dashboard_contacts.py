"""Contacts and ratings: listed with search, downloaded as CSV with formula cells neutralised (and
the export audited); agents get 403."""

from __future__ import annotations

import csv
import io

import server.contacts
from server.contacts import neutralised
from tests.dashboard import sign_in
from tests.harness import Parley, session


def test_cells_that_a_spreadsheet_would_run_are_neutralised():
    assert [neutralised(v) for v in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "ok", None, 5)] == [
        "'=1+1", "'+1", "'-2", "'@SUM(A1)", "'\tx", "ok", "", "5"]


async def test_contacts_and_ratings_with_search_and_csv(parley: Parley):
    ana, evil = session("ana"), session("evil")
    await parley.ask(ana, "Can you call me back about my order?")
    assert (await parley.post("contact", parley.ids(ana, email="ana@example.org", name="Ana Lima",
                                                     phone="+351 912 345 678"))).status_code == 200
    await parley.ask(evil, "=HYPERLINK(\"http://evil.example\",\"click\")")
    assert (await parley.post("contact", parley.ids(evil, email="evil@example.org",
                                                     name="=cmd|' /C calc'!A0"))).status_code == 200
    await parley.post("rate", parley.ids(ana, score=5))
    await parley.post("rate/comment", parley.ids(ana, comment="-great, thanks"))
    admin = await sign_in(parley, "admin@example.com")
    url = f"/dashboard/sites/{parley.site_key}/contacts"
    try:
        page = await admin.get(url)
        assert "ana@example.org" in page.text and "evil@example.org" in page.text
        assert "Can you call me back" in page.text
        found = await admin.get(url, q="LIMA")
        assert "ana@example.org" in found.text and "evil@example.org" not in found.text
        exported = await admin.get(url, format="csv")
        assert exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(exported.text)))
        assert rows[0] == ["date", "email", "name", "phone", "message", "page", "session_id"]
        by_email = {r[1]: r for r in rows[1:]}
        assert by_email["evil@example.org"][2] == "'=cmd|' /C calc'!A0"
        assert by_email["evil@example.org"][4].startswith("'=HYPERLINK")
        assert by_email["ana@example.org"][3].startswith("'+351")
        # Quoted, so a spreadsheet splitting on ";" keeps "hi;=..." in one cell.
        assert all(line.startswith('"') for line in exported.text.splitlines())
        ratings = list(csv.reader(io.StringIO((await admin.get(url, view="ratings", format="csv")).text)))
        assert ratings[1][1:4] == ["5", "'-great, thanks", "ana@example.org"]
        assert "-great, thanks" in (await admin.get(url, view="ratings")).text
        actions = [e.action for e in await parley.services.audit.entries()]
        assert "contacts.export" in actions and "ratings.export" in actions
    finally:
        await admin.client.aclose()
    agent = await sign_in(parley, "agent@example.com", role="agent", sites=(parley.site.id,))
    try:
        assert (await agent.get(url)).status_code == 403
        assert (await agent.get(url, format="csv")).status_code == 403
    finally:
        await agent.client.aclose()


async def test_a_cut_list_of_contacts_says_so(parley: Parley, monkeypatch):
    monkeypatch.setattr(server.contacts, "PAGE_ROWS", 2)
    for name in ("a", "b", "c"):
        await parley.ask(session(f"contact-{name}"), "Call me back?")
        await parley.post("contact", parley.ids(session(f"contact-{name}"), email=f"{name}@example.org"))
    admin = await sign_in(parley, "admin@example.com")
    url = f"/dashboard/sites/{parley.site_key}/contacts"
    try:
        page = (await admin.get(url)).text
        assert page.count("@example.org</td>") == 2 and "Showing the newest 2: search to find older ones" in page
        assert "Showing the newest" not in (await admin.get(url, q="b@example.org")).text
    finally:
        await admin.client.aclose()
