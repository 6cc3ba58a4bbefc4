"""The dashboard page's own requests: the inbox list, one conversation, the actions on it, visitors
online, and the live feed (/dashboard/events). Each is a thin call into server/ services."""

from __future__ import annotations

import asyncio
from typing import Any

from server.errors import InvalidRequest, NotFound
from server.inbox import INBOX_MAX_PAGE, INBOX_PAGE, FeedEvent, inbox_cursor
from server.opening_hours import PRESENCE_HEARTBEAT
from server.store.models import Conversation, Site
from server.validation import SESSION_ID_RE, int_field, query_int, string_field

from handlers.operator_base import OperatorApiHandler
from handlers.serializers import (
    conversation_detail_json,
    conversation_summary_json,
    inbox_json,
    message_json,
    note_json,
    operator_json,
)
from handlers.sse import EventStreamMixin, event_text

MAX_CURSOR = 2**62


class DashboardApiHandler(OperatorApiHandler):
    @property
    def base_url(self) -> str:
        configured = self.services.config.public_url
        return configured or f"{self.request.protocol}://{self.request.host}"

    def messages_json(self, messages: list[Any]) -> list[dict[str, Any]]:
        return [message_json(m, self.services.chat, self.base_url) for m in messages]


class MeHandler(DashboardApiHandler):
    async def get(self) -> None:
        sites = await self.services.inbox.sites_of(self.operator)
        # Whom a conversation can be assigned to: names only (an agent has no business with the
        # others' emails, roles or second factors; admins see those on the Operators page).
        operators = [{"id": o.id, "name": o.name} for o in await self.services.inbox.active_operators()]
        canned = {site_id: [{"shortcut": c.shortcut, "content": c.content} for c in replies]
                  for site_id, replies in (await self.services.inbox.canned_replies(sites)).items()}
        self.write_json({"success": True, "operator": operator_json(self.operator),
                         "sites": [{"id": s.id, "name": s.name, "site_key": s.site_key} for s in sites],
                         "operators": operators, "canned_replies": canned,
                         "prefs": self.operator.prefs})


class InboxApiHandler(DashboardApiHandler):
    async def get(self) -> None:
        query = self.query()
        inbox = self.services.inbox
        site_id = query_int(query.get("site"), "site", minimum=1, maximum=MAX_CURSOR)
        limit = query_int(query.get("limit"), "limit", minimum=1, maximum=INBOX_MAX_PAGE) or INBOX_PAGE
        entries = await inbox.inbox(self.operator, status=query.get("status", "all"),
                                    search=string_field(query, "q", required=False, max_length=200),
                                    site_id=site_id, limit=limit,
                                    before=string_field(query, "before", required=False, max_length=80))
        sites = {s.id: s for s in await inbox.sites_of(self.operator)}
        # A full page may have more behind it; `next` is where they start.
        self.write_json({"success": True, "conversations": inbox_json(entries, sites, inbox.is_online),
                         "next": inbox_cursor(entries[-1]) if len(entries) == limit else None})


class ConversationApiHandler(DashboardApiHandler):
    """GET: the conversation, its messages (after=ID for only the new ones) and its notes."""

    async def get(self, conversation_id: str) -> None:
        inbox = self.services.inbox
        after = query_int(self.query().get("after"), "after", minimum=0, maximum=MAX_CURSOR)
        if after:
            conversation, messages, notes = await inbox.messages_after(
                self.operator, int(conversation_id), after)
            site, _ = await inbox.conversation(self.operator, conversation.id)
            blocked = None
            earlier = False
        else:
            view = await inbox.view(self.operator, int(conversation_id))
            site, conversation, messages, notes = view.site, view.conversation, view.messages, view.notes
            blocked, earlier = view.blocked, view.earlier
        detail = conversation_detail_json(conversation, site, online=inbox.is_online(conversation),
                                          blocked=bool(blocked))
        if blocked is None:
            detail.pop("blocked")
        self.write_json({"success": True, "conversation": detail,
                         "messages": self.messages_json(messages),
                         "notes": [note_json(n) for n in notes],
                         "earlier": earlier})  # older messages exist than the view holds


class ConversationActionHandler(DashboardApiHandler):
    """POST /dashboard/api/conversations/ID/ACTION with a JSON body."""

    ACTIONS = ("takeover", "handback", "reply", "close", "reopen", "assign", "note", "block",
               "unblock", "read", "viewing")

    async def post(self, conversation_id: str, action: str) -> None:
        if action not in self.ACTIONS:
            raise InvalidRequest("Unknown action.")
        data = self.json_body() if self.request.body else {}
        site, conversation = await self.services.inbox.conversation(self.operator, int(conversation_id))
        result = await getattr(self, f"do_{action}")(site, conversation, data)
        self.write_json({"success": True, **(result or {})})

    async def do_takeover(self, site: Site, conversation: Conversation, data: dict) -> None:
        operators = self.services.operators
        await operators.set_mode(site, conversation.session_id, "operator", actor=self.actor)
        if conversation.assignee_id is None:
            await operators.assign(site, conversation, self.operator.id, actor=self.actor)

    async def do_handback(self, site: Site, conversation: Conversation, data: dict) -> None:
        await self.services.operators.set_mode(site, conversation.session_id, "ai", actor=self.actor)

    async def do_reply(self, site: Site, conversation: Conversation, data: dict) -> dict:
        text = string_field(data, "text", max_length=4000) or ""
        message = await self.services.operators.say(site, conversation.session_id, text,
                                                    operator_name=self.operator.name)
        await self.services.operators.mark_read(site, conversation, message.id)
        return {"message": message_json(message, self.services.chat, self.base_url)}

    async def do_close(self, site: Site, conversation: Conversation, data: dict) -> None:
        await self.services.operators.set_closed(site, conversation, True, actor=self.actor)

    async def do_reopen(self, site: Site, conversation: Conversation, data: dict) -> None:
        await self.services.operators.set_closed(site, conversation, False, actor=self.actor)

    async def do_assign(self, site: Site, conversation: Conversation, data: dict) -> None:
        operator_id = data.get("operator_id")
        if operator_id is not None:
            operator_id = int_field(data, "operator_id", minimum=1, maximum=MAX_CURSOR)
        await self.services.operators.assign(site, conversation, operator_id, actor=self.actor)

    async def do_note(self, site: Site, conversation: Conversation, data: dict) -> dict:
        text = string_field(data, "text", max_length=4000) or ""
        note = await self.services.operators.add_note(site, conversation, text, actor=self.actor)
        return {"note": note_json(note)}

    def _block_targets(self, conversation: Conversation, data: dict) -> list[tuple[str, str]]:
        kinds = data.get("kinds", ["session"])
        if not isinstance(kinds, list) or not kinds or not all(k in ("session", "ip", "email")
                                                               for k in kinds):
            raise InvalidRequest("'kinds' is a list of session, ip and email.")
        values = {"session": conversation.session_id, "ip": conversation.ip,
                  "email": conversation.email}
        targets = [(kind, values[kind]) for kind in dict.fromkeys(kinds) if values[kind]]
        if not targets:
            raise InvalidRequest("This visitor has no IP address or email to block.")
        return targets  # type: ignore[return-value]

    async def do_block(self, site: Site, conversation: Conversation, data: dict) -> None:
        minutes = data.get("minutes")
        if minutes is not None and (not isinstance(minutes, (int, float)) or isinstance(minutes, bool)
                                    or not 0 < minutes <= 10 * 365 * 24 * 60):
            raise InvalidRequest("'minutes' is a positive number (or null for good).")
        reason = string_field(data, "reason", required=False, max_length=500)
        for kind, value in self._block_targets(conversation, data):
            await self.services.operators.block(site, kind, value, minutes=minutes, reason=reason,
                                                session_id=conversation.session_id, actor=self.actor)

    async def do_unblock(self, site: Site, conversation: Conversation, data: dict) -> None:
        data = {"kinds": ["session", "ip", "email"], **data}
        values = {"session": conversation.session_id, "ip": conversation.ip,
                  "email": conversation.email}
        for kind in data["kinds"] if isinstance(data["kinds"], list) else []:
            if kind in values and values[kind]:
                await self.services.operators.unblock(site, kind, values[kind],
                                                      session_id=conversation.session_id,
                                                      actor=self.actor)

    async def do_viewing(self, site: Site, conversation: Conversation, data: dict) -> None:
        await self.services.operators.viewing(site, conversation, actor=self.actor)

    async def do_read(self, site: Site, conversation: Conversation, data: dict) -> None:
        through = int_field(data, "through", minimum=0, maximum=MAX_CURSOR) or 0
        await self.services.operators.mark_read(site, conversation, through)


class VisitorsApiHandler(DashboardApiHandler):
    async def get(self) -> None:
        inbox = self.services.inbox
        visitors = await inbox.online(self.operator)
        self.write_json({"success": True, "visitors": [
            conversation_summary_json(c, site, online=True) | {"last_seen_at": c.last_seen_at}
            for site, c in visitors]})


class ProactiveApiHandler(DashboardApiHandler):
    """POST {site_id, session_id, text}: a proactive message to a visitor online now."""

    async def post(self) -> None:
        data = self.json_body()
        site = await self.services.inbox.site(self.operator,
                                              int_field(data, "site_id", minimum=1, maximum=MAX_CURSOR) or 0)
        session_id = string_field(data, "session_id", max_length=80) or ""
        if not SESSION_ID_RE.match(session_id):
            raise InvalidRequest("'session_id' is not a session id.")
        text = string_field(data, "text", max_length=1000) or ""
        message = await self.services.operators.send_proactive(site, session_id, text)
        await self.services.audit.record(self.actor, "proactive", site_id=site.id, target=session_id)
        self.write_json({"success": True, "id": message.id})


class FeedHandler(EventStreamMixin, OperatorApiHandler):
    """GET /dashboard/events: one Server-Sent Events feed per tab. Each event carries the store's
    event id; a reconnecting EventSource sends Last-Event-ID and gets what it missed."""

    async def get(self) -> None:
        raw = self.request.headers.get("Last-Event-ID") or self.get_query_argument("after", None)
        after = None
        if raw:
            try:
                after = max(0, int(raw))
            except ValueError:
                raise InvalidRequest("Last-Event-ID is an event id.") from None
        token = self.session_token
        accounts, operator = self.services.accounts, self.operator
        # Ends (the page reconnects, or goes to sign-in) once the session no longer gives these rights.
        allowed = (lambda: accounts.still_signed_in(token, operator)) if token else None
        self.start_event_stream()
        # While the feed is open, the operator counts as online for the opening hours' rule.
        presence = asyncio.ensure_future(self.services.accounts.stay_present(token, PRESENCE_HEARTBEAT)) \
            if token else None
        try:
            await self.hold(self.send_batches(
                lambda push: self.services.inbox.feed(operator, after, allowed=allowed, push_live=push),
                self._frame))
        finally:
            if presence is not None:
                presence.cancel()

    @staticmethod
    def _frame(event: FeedEvent) -> str:
        return event_text(event.json, event_id=event.id)


class DashboardApiNotFoundHandler(OperatorApiHandler):
    """Any other address under /dashboard/api/: a JSON 404, as the page's scripts expect."""

    allow_signed_out = True

    async def prepare(self) -> None:
        await super().prepare()
        raise NotFound("No such dashboard API endpoint.")
