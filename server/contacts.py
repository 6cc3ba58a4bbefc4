"""Contacts and ratings visitors left, for the dashboard and as CSV. A spreadsheet runs a cell that
starts with = + - @ (or a tab / carriage return) as a formula: such cells get a leading apostrophe."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from server.audit import Actor, AuditLog
from server.store.base import Store
from server.store.models import Site

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MAX_ROWS = 5000  # in one CSV; the page shows PAGE_ROWS
PAGE_ROWS = 500


def neutralised(cell: object) -> str:
    text = "" if cell is None else str(cell)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


@dataclass(frozen=True)
class ContactRow:
    session_id: str
    email: str | None
    name: str | None
    phone: str | None
    message: str | None  # the visitor's first message
    page: str | None
    date: str
    rating: int | None
    comment: str | None


class Contacts:
    def __init__(self, store: Store, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit

    async def page(self, site: Site, *, rated: bool = False, search: str | None = None,
                   limit: int | None = None) -> tuple[list[ContactRow], bool]:
        """The newest contacts (PAGE_ROWS unless `limit` says otherwise, at most MAX_ROWS), and
        whether older ones exist beyond them."""
        limit = min(limit or PAGE_ROWS, MAX_ROWS)
        conversations = await self.store.list_contacts(site.id, rated=rated, search=search or None,
                                                       limit=limit + 1)
        more = len(conversations) > limit
        conversations = conversations[:limit]
        firsts = await self.store.first_visitor_messages([c.id for c in conversations])
        rows = [ContactRow(c.session_id, c.email, c.contact_name, c.phone,
                           firsts[c.id][:1000] if c.id in firsts else None, c.page_url, c.created_at,
                           c.rating, c.rating_comment) for c in conversations]
        return rows, more

    async def csv(self, site: Site, *, rated: bool, search: str | None, actor: Actor) -> str:
        rows, _ = await self.page(site, rated=rated, search=search, limit=MAX_ROWS)
        out = io.StringIO()
        # Every field quoted: a spreadsheet that splits on ";" (many locales) must not turn the
        # rest of "hi;=cmd|..." into a cell of its own, where the first-character guard cannot see it.
        writer = csv.writer(out, quoting=csv.QUOTE_ALL)
        if rated:
            writer.writerow(["date", "rating", "comment", "email", "name", "session_id"])
            for r in rows:
                writer.writerow([neutralised(v) for v in (r.date, r.rating, r.comment, r.email, r.name, r.session_id)])
        else:
            writer.writerow(["date", "email", "name", "phone", "message", "page", "session_id"])
            for r in rows:
                writer.writerow([neutralised(v) for v in
                                 (r.date, r.email, r.name, r.phone, r.message, r.page, r.session_id)])
        await self.audit.record(actor, "ratings.export" if rated else "contacts.export", site_id=site.id,
                                rows=len(rows))
        return out.getvalue()
