"""What operators do to a conversation. The CLI and the dashboard make the same calls; each
action says who acted (an `Actor`), and the ones worth keeping go to the audit log."""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

from server.audit import CLI, Actor, AuditLog
from server.errors import InvalidRequest
from server.hub import AS_WRITTEN, Hub, session_topic, site_topic
from server.store.base import Store
from server.store.models import Conversation, Message, Note, ProactiveMessage, Site, handoff_event
from server.validation import SESSION_ID_RE, normalise_email

log = logging.getLogger(__name__)

BLOCK_KINDS = ("session", "ip", "email")


class OperatorService:
    def __init__(self, store: Store, hub: Hub, audit: AuditLog | None = None) -> None:
        self.store = store
        self.hub = hub
        self.audit = audit or AuditLog(store)

    async def _notify(self, site: Site, session_id: str, kind: str, payload: dict) -> None:
        await self.hub.publish_to_session(site.id, session_id, kind, payload)

    async def _notify_operators(self, site: Site, kind: str, payload: dict) -> None:
        """News only operators hear (never the visitor's topic): assignments, notes, closing."""
        await self.hub.publish(site_topic(site.id), kind, payload)

    async def knows(self, site: Site, session_id: str) -> bool:
        """Whether this site has seen the session: its widget reported a page, or it chatted."""
        return await self.store.get_conversation(site.id, session_id) is not None

    async def say(self, site: Site, session_id: str, text: str, *, operator_name: str) -> Message:
        text = text.strip()
        if not text or len(text) > 4000:
            raise InvalidRequest("An operator message is 1 to 4000 characters.")
        events: list[tuple[str, str, dict[str, Any]]] = []

        def events_of(message: Message) -> list[tuple[str, str, dict[str, Any]]]:
            events[:] = self.hub.session_events(site.id, session_id, "message",
                                                {"message_id": message.id, "role": "operator"})
            return events

        written: list[Any] = []

        def following(previous: int, mode: str) -> None:
            written[:] = [previous, mode]

        # The conversation, the message and its events in one store transaction (recorded for
        # other processes first, then delivered here).
        message = await self.store.add_operator_message(
            site.id, session_id, text, operator_name=operator_name, events=events_of,
            origin=self.hub.origin, following=following)
        log.info("operator %s wrote message %s to site=%s", operator_name, message.id, site.id)
        # What the write saw goes to the visitor's waiters here: one whose cursor it follows is
        # answered without reading the store again (ChatService.operator_messages).
        here = ({session_topic(site.id, session_id): {AS_WRITTEN: (written[0], written[1], message)}}
                if written else None)
        self.hub.deliver_recorded(events, here=here)
        return message

    async def set_mode(self, site: Site, session_id: str, mode: str, *, actor: Actor = CLI) -> None:
        if mode not in ("ai", "operator"):
            raise InvalidRequest("The mode is 'ai' or 'operator'.")
        conversation = await self.store.ensure_conversation(site.id, session_id, {})
        # Either way a person has decided who answers: the conversation no longer needs one.
        changes: dict[str, object] = {"mode": mode, "handoff": False}
        await self.store.update_conversation(conversation.id, changes)
        log.info("conversation %s of site=%s now in %s mode", conversation.id, site.id, mode)
        # Heard by the process answering this visitor too: a takeover stops an answer in progress.
        await self._notify(site, session_id, "mode", {"mode": mode})
        await self.audit.record(actor, "takeover" if mode == "operator" else "handback",
                                site_id=site.id, target=session_id)

    async def hand_over(self, site: Site, conversation: Conversation, reason: str) -> None:
        """Mark the conversation as needing a person, for `reason` (HANDOFF_REASONS), and tell the
        site's operators live, as an AI handoff does."""
        await self.store.update_conversation(conversation.id, {"handoff": True, "handoff_reason": reason})
        log.info("conversation %s of site=%s needs a person: %s", conversation.id, site.id, reason)
        await self._notify_operators(site, "handoff", handoff_event(conversation.session_id, reason))

    async def block(self, site: Site, kind: str, value: str, *, minutes: float | None = None,
                    reason: str | None = None, session_id: str | None = None,
                    actor: Actor = CLI) -> None:
        if kind not in BLOCK_KINDS:
            raise InvalidRequest(f"A block matches one of: {', '.join(BLOCK_KINDS)}.")
        if minutes is not None and minutes <= 0:
            raise InvalidRequest("A block lasts a positive number of minutes.")
        value = self._block_value(kind, value)
        expires_at = time.time() + minutes * 60 if minutes else None
        await self.store.add_block(site.id, kind, value, expires_at, reason)
        log.info("blocked %s on site=%s for %s", kind, site.id,
                 f"{minutes:g} min" if minutes else "good")
        await self.audit.record(actor, "block", site_id=site.id, target=f"{kind}:{value}",
                                minutes=minutes, reason=reason)
        if session_id:
            await self._notify(site, session_id, "block", {"blocked": True})

    async def unblock(self, site: Site, kind: str, value: str, *,
                      session_id: str | None = None, actor: Actor = CLI) -> int:
        value = self._block_value(kind, value)
        removed = await self.store.remove_blocks(site.id, kind, value)
        log.info("removed %d %s block(s) on site=%s", removed, kind, site.id)
        if removed:  # the audit keeps what changed: the dashboard's Unblock tries every kind
            await self.audit.record(actor, "unblock", site_id=site.id, target=f"{kind}:{value}",
                                    removed=removed)
        if session_id:
            await self._notify(site, session_id, "block", {"blocked": False})
        return removed

    @staticmethod
    def _block_value(kind: str, value: str) -> str:
        """The form a block is stored and matched in: a canonical IP, a lower-case email."""
        if kind == "ip":
            try:
                return str(ipaddress.ip_address(value.strip()))
            except ValueError:
                raise InvalidRequest(f"'{value[:100]}' is not an IP address.") from None
        if kind == "email":
            return normalise_email(value.strip()).lower()
        if not SESSION_ID_RE.match(value):
            raise InvalidRequest("A session id looks like sess_ followed by 16 to 64 characters.")
        return value

    async def send_proactive(self, site: Site, session_id: str, text: str, *,
                             sender: str = "operator") -> ProactiveMessage:
        text = text.strip()
        if not text or len(text) > 1000:
            raise InvalidRequest("A proactive message is 1 to 1000 characters.")
        message = await self.store.add_proactive(site.id, session_id, text, sender)
        assert message is not None  # only rule messages are ever deduplicated
        log.info("proactive message %s queued for site=%s", message.id, site.id)
        await self._notify(site, session_id, "proactive", {"proactive_id": message.id})
        return message

    # -- the dashboard's own actions ----------------------------------------------------------
    async def set_closed(self, site: Site, conversation: Conversation, closed: bool, *,
                         actor: Actor = CLI) -> None:
        # Closing is a person's decision too: a closed conversation no longer needs one.
        await self.store.update_conversation(conversation.id, {"closed": True, "handoff": False} if closed
                                             else {"closed": False})
        await self._notify_operators(site, "closed", {"session_id": conversation.session_id,
                                                      "closed": closed})
        await self.audit.record(actor, "close" if closed else "reopen", site_id=site.id,
                                target=conversation.session_id)

    async def assign(self, site: Site, conversation: Conversation, operator_id: int | None, *,
                     actor: Actor = CLI) -> None:
        if operator_id is not None:
            assignee = await self.store.get_operator(operator_id)
            if assignee is None or assignee.disabled or not (
                    assignee.is_admin or site.id in assignee.site_ids):
                raise InvalidRequest("That operator cannot take conversations of this site.")
        await self.store.update_conversation(conversation.id, {"assignee_id": operator_id})
        await self._notify_operators(site, "assigned", {"session_id": conversation.session_id,
                                                        "assignee_id": operator_id})
        await self.audit.record(actor, "assign", site_id=site.id, target=conversation.session_id,
                                assignee_id=operator_id)

    async def add_note(self, site: Site, conversation: Conversation, text: str, *,
                       actor: Actor) -> Note:
        """An internal note: stored apart from messages, so neither the visitor nor the model
        can ever read it."""
        text = text.strip()
        if not text or len(text) > 4000:
            raise InvalidRequest("A note is 1 to 4000 characters.")
        note = await self.store.add_note(conversation.id, actor.id, actor.name, text)
        await self._notify_operators(site, "note", {"session_id": conversation.session_id,
                                                    "note_id": note.id})
        return note

    async def mark_read(self, site: Site, conversation: Conversation, through: int) -> None:
        if through > conversation.read_through:
            await self.store.update_conversation(conversation.id, {"read_through": through})
            await self._notify_operators(site, "read", {"session_id": conversation.session_id})

    async def viewing(self, site: Site, conversation: Conversation, *, actor: Actor) -> None:
        """Tell other operators who has this conversation open (pages repeat it every 20 s)."""
        await self._notify_operators(site, "viewing", {"conversation_id": conversation.id,
                                                       "operator_id": actor.id,
                                                       "operator_name": actor.name})
