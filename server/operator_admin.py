"""Admins managing dashboard accounts: add, disable/enable, reset a password, assign sites, change
role. The last enabled admin can be neither disabled nor made an agent: someone must hold the keys."""

from __future__ import annotations

from typing import Iterable

from server.accounts import AccountService
from server.audit import Actor, AuditLog
from server.errors import Conflict, InvalidRequest
from server.operators import OperatorService
from server.store.base import Store
from server.store.models import Operator

RELEASE_PAGE = 50
RELEASE_PAGES = 20  # conversations released at once, at most: RELEASE_PAGE * RELEASE_PAGES


class OperatorAdmin:
    def __init__(self, store: Store, accounts: AccountService, operators: OperatorService,
                 audit: AuditLog) -> None:
        self.store = store
        self.accounts = accounts
        self.operators = operators
        self.audit = audit

    async def list(self) -> list[Operator]:
        return await self.store.list_operators()

    async def get(self, operator_id: int) -> Operator:
        operator = await self.store.get_operator(operator_id)
        if operator is None:
            raise InvalidRequest("No such operator.")
        return operator

    async def add(self, email: str, name: str, role: str, password: str, site_ids: Iterable[int],
                  actor: Actor) -> Operator:
        operator = await self.accounts.create(email, name, role, password, site_ids)
        await self.audit.record(actor, "operator.add", target=operator.email, role=role)
        return operator

    async def _keep_an_admin(self, operator: Operator) -> None:
        if not operator.is_admin or operator.disabled:
            return
        admins = [o for o in await self.store.list_operators() if o.is_admin and not o.disabled]
        if [o.id for o in admins] == [operator.id]:
            raise Conflict("This is the last admin: make another admin first.")

    async def set_disabled(self, operator: Operator, disabled: bool, actor: Actor) -> None:
        if disabled:
            await self._keep_an_admin(operator)
        await self.accounts.set_disabled(operator, disabled)
        await self.audit.record(actor, "operator.disable" if disabled else "operator.enable",
                                target=operator.email)
        if disabled:
            await self._release(operator, actor)

    async def reset_password(self, operator: Operator, password: str, actor: Actor) -> None:
        await self.accounts.set_password(operator, password)
        await self.audit.record(actor, "operator.password_reset", target=operator.email)

    async def set_role(self, operator: Operator, role: str, actor: Actor) -> None:
        if role not in ("admin", "agent"):
            raise InvalidRequest("The role is 'admin' or 'agent'.")
        if role == operator.role:
            return
        if role == "agent":
            await self._keep_an_admin(operator)
        await self.store.update_operator(operator.id, {"role": role})
        await self.audit.record(actor, "operator.role", target=operator.email, role=role)
        if role == "agent":
            await self._release(operator, actor, keep=operator.site_ids)

    async def set_sites(self, operator: Operator, site_ids: list[int], actor: Actor) -> None:
        known = {site.id for site in await self.store.list_sites()}
        if not set(site_ids) <= known:
            raise InvalidRequest("Unknown site.")
        await self.store.set_operator_sites(operator.id, site_ids)
        await self.audit.record(actor, "operator.sites", target=operator.email,
                                sites=",".join(str(i) for i in sorted(site_ids)))
        if not operator.is_admin:
            await self._release(operator, actor, keep=site_ids)

    async def _release(self, operator: Operator, actor: Actor, *, keep: Iterable[int] = ()) -> None:
        """The operator's open conversations on every site but `keep` (those they can still
        answer): unassigned, and those they had taken over handed back to the AI and marked as
        needing a person (otherwise nobody would answer the visitor)."""
        kept = set(keep)
        sites = {site.id: site for site in await self.store.list_sites() if site.id not in kept}
        if not sites:
            return
        for _ in range(RELEASE_PAGES):
            entries = await self.store.list_inbox(list(sites), status="mine", operator_id=operator.id,
                                                  limit=RELEASE_PAGE)
            for entry in entries:
                conversation, site = entry.conversation, sites[entry.conversation.site_id]
                if conversation.mode == "operator":
                    await self.operators.set_mode(site, conversation.session_id, "ai", actor=actor)
                    await self.operators.hand_over(site, conversation, "operator_lost_access")
                await self.operators.assign(site, conversation, None, actor=actor)
            if len(entries) < RELEASE_PAGE:
                return
