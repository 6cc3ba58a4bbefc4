"""The audit log: who did what, when, from where. Stored, readable by admins, never edited."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from server.store.base import Store, StoreUnavailable
from server.store.models import AuditEntry, Operator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    """Who is acting: an operator in the dashboard (with their address), or the command line."""
    operator: Operator | None
    ip: str | None = None

    @property
    def name(self) -> str:
        return self.operator.name if self.operator else "Operator"

    @property
    def id(self) -> int | None:
        return self.operator.id if self.operator else None


CLI = Actor(operator=None, ip=None)


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(self, actor: Actor, action: str, *, site_id: int | None = None,
                     target: str | None = None, **detail: Any) -> None:
        try:
            await self.store.add_audit(
                operator_id=actor.id, operator_email=actor.operator.email if actor.operator else "cli",
                action=action, site_id=site_id, target=target, detail=detail, ip=actor.ip)
        except StoreUnavailable:
            # The action itself happened; say loudly that its record is missing.
            log.error("could not record audit entry %s by %s", action, actor.id)

    async def entries(self, *, limit: int = 200, before: int | None = None) -> list[AuditEntry]:
        return await self.store.list_audit(limit=limit, before=before)
