"""One visitor's data: exported as JSON, or erased everywhere; and the retention job that erases
conversations older than their site allows."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from server.audit import Actor, AuditLog
from server.blobs import BlobStore, is_blob_key
from server.errors import UnknownConversation
from server.store.base import Store
from server.store.models import Site

log = logging.getLogger(__name__)

# The most messages one export holds, and the most conversations one retention run erases per site:
# every loop over user data has a bound; the job runs again a minute later.
EXPORT_MAX_MESSAGES = 50_000
RETENTION_BATCH = 200
MAX_RETENTION_DAYS = 36_500


class VisitorNotFound(UnknownConversation):
    """No conversation of this session on this site."""

    def __init__(self) -> None:
        super().__init__("This site has no conversation with that session id.")


def retention_days(site: Site) -> int | None:
    """Days a site keeps conversations, or None to keep them (the default)."""
    days = site.settings.get("retention_days")
    if isinstance(days, int) and not isinstance(days, bool) and 0 < days <= MAX_RETENTION_DAYS:
        return days
    return None


def session_fingerprint(session_id: str) -> str:
    """What the audit log keeps of an erased session: enough to match a request the admin holds,
    not the id itself (the erase must leave no trace of it)."""
    return "sha256:" + hashlib.sha256(session_id.encode()).hexdigest()[:16]


class PrivacyService:
    def __init__(self, store: Store, blobs: BlobStore, audit: AuditLog) -> None:
        self.store = store
        self.blobs = blobs
        self.audit = audit

    async def export(self, site: Site, session_id: str, *, base_url: str, actor: Actor) -> dict[str, Any]:
        conversation = await self.store.get_conversation(site.id, session_id)
        if conversation is None:
            raise VisitorNotFound()
        messages: list[dict[str, Any]] = []
        uploads: list[dict[str, Any]] = []
        after = 0
        while len(messages) < EXPORT_MAX_MESSAGES:
            page = await self.store.list_messages(conversation.id, after=after, limit=500)
            if not page:
                break
            for message in page:
                entry = {"role": message.role, "content": message.content,
                         "created_at": message.created_at, "status": message.status}
                if message.operator_name:
                    entry["operator_name"] = message.operator_name
                if message.image_key:
                    url = self.blobs.url_for(message.image_key, base_url)
                    entry["image_url"] = url
                    uploads.append({"key": message.image_key, "url": url, "created_at": message.created_at})
                messages.append(entry)
            after = page[-1].id
        await self.audit.record(actor, "visitor.export", site_id=site.id,
                                target=session_fingerprint(session_id), messages=len(messages))
        return {
            "site": {"site_key": site.site_key, "name": site.name},
            "session_id": session_id,
            "conversation": {
                "created_at": conversation.created_at, "updated_at": conversation.updated_at,
                "mode": conversation.mode, "lang": conversation.lang, "page_url": conversation.page_url,
                "page_title": conversation.page_title, "ip": conversation.ip,
                "user_agent": conversation.user_agent,
            },
            "contact": {"email": conversation.email, "name": conversation.contact_name,
                        "phone": conversation.phone},
            "rating": ({"rating": conversation.rating, "comment": conversation.rating_comment}
                       if conversation.rating is not None else None),
            "messages": messages,
            "uploads": uploads,
        }

    async def erase(self, site: Site, session_id: str, *, actor: Actor, reason: str = "request",
                    without_conversation: bool = False) -> dict[str, int]:
        """Erase everything of the session. A session with no conversation is refused
        (VisitorNotFound: likely a mistyped id) unless `without_conversation`, which erases its
        other traces anyway."""
        if not without_conversation and await self.store.get_conversation(site.id, session_id) is None:
            raise VisitorNotFound()
        keys = await self.store.erase_conversation(site.id, session_id)
        deleted = await self._delete_uploads(keys)
        await self.audit.record(actor, "visitor.erase", site_id=site.id,
                                target=session_fingerprint(session_id), uploads=deleted, reason=reason)
        return {"uploads": deleted}

    async def _delete_uploads(self, keys: list[str]) -> int:
        deleted = 0
        for key in keys:
            if not is_blob_key(key):
                continue
            try:
                await self.blobs.delete(key)
                deleted += 1
            except Exception:  # noqa: BLE001 - one missing blob must not keep the others
                log.exception("could not delete upload %s", key)
        return deleted

    async def apply_retention(self, sites: list[Site], *, actor: Actor, now: datetime | None = None) -> int:
        """Erase the conversations (with their uploads) of each site idle for longer than its
        retention; returns how many. At most RETENTION_BATCH per site per run."""
        now = now or datetime.now(timezone.utc)
        erased = 0
        for site in sites:
            days = retention_days(site)
            if days is None:
                continue
            cutoff = (now - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
            sessions = await self.store.stale_sessions(site.id, updated_before=cutoff, limit=RETENTION_BATCH)
            for n, session_id in enumerate(sessions, 1):
                # The search index is compacted and the log emptied once, after the batch's last.
                keys = await self.store.erase_conversation(site.id, session_id, compact=n == len(sessions))
                await self._delete_uploads(keys)
            if sessions:
                erased += len(sessions)
                await self.audit.record(actor, "retention.erase", site_id=site.id,
                                        conversations=len(sessions), days=days)
                log.info("retention: erased %d conversation(s) of site %s older than %d days",
                         len(sessions), site.site_key, days)
        return erased
