"""What operators do to a conversation. The CLI uses it now; the dashboard will use the same calls."""

from __future__ import annotations

import ipaddress
import logging
import time

from server.errors import InvalidRequest
from server.hub import Hub
from server.store.base import Store
from server.store.models import Message, ProactiveMessage, Site
from server.validation import SESSION_ID_RE, normalise_email

log = logging.getLogger(__name__)

BLOCK_KINDS = ("session", "ip", "email")


class OperatorService:
    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub

    async def _notify(self, site: Site, session_id: str, kind: str, payload: dict) -> None:
        await self.hub.publish_to_session(site.id, session_id, kind, payload)

    async def say(self, site: Site, session_id: str, text: str, *, operator_name: str) -> Message:
        text = text.strip()
        if not text or len(text) > 4000:
            raise InvalidRequest("An operator message is 1 to 4000 characters.")
        conversation = await self.store.ensure_conversation(site.id, session_id, {})
        message = await self.store.add_message(
            conversation.id, "operator", text, operator_name=operator_name
        )
        log.info("operator %s wrote message %s to site=%s", operator_name, message.id, site.id)
        await self._notify(site, session_id, "message", {"message_id": message.id, "role": "operator"})
        return message

    async def set_mode(self, site: Site, session_id: str, mode: str) -> None:
        if mode not in ("ai", "operator"):
            raise InvalidRequest("The mode is 'ai' or 'operator'.")
        conversation = await self.store.ensure_conversation(site.id, session_id, {})
        changes: dict[str, object] = {"mode": mode}
        if mode == "operator":
            changes["handoff"] = False  # someone has picked it up
        await self.store.update_conversation(conversation.id, changes)
        log.info("conversation %s of site=%s now in %s mode", conversation.id, site.id, mode)
        await self._notify(site, session_id, "mode", {"mode": mode})

    async def block(self, site: Site, kind: str, value: str, *, minutes: float | None = None,
                    reason: str | None = None, session_id: str | None = None) -> None:
        if kind not in BLOCK_KINDS:
            raise InvalidRequest(f"A block matches one of: {', '.join(BLOCK_KINDS)}.")
        if minutes is not None and minutes <= 0:
            raise InvalidRequest("A block lasts a positive number of minutes.")
        value = self._block_value(kind, value)
        expires_at = time.time() + minutes * 60 if minutes else None
        await self.store.add_block(site.id, kind, value, expires_at, reason)
        log.info("blocked %s on site=%s for %s", kind, site.id,
                 f"{minutes:g} min" if minutes else "good")
        if session_id:
            await self._notify(site, session_id, "block", {"blocked": True})

    async def unblock(self, site: Site, kind: str, value: str, *,
                      session_id: str | None = None) -> int:
        removed = await self.store.remove_blocks(site.id, kind, self._block_value(kind, value))
        log.info("removed %d %s block(s) on site=%s", removed, kind, site.id)
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
