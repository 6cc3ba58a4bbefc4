"""The dashboard's pages: sign-in (and its second step), first-admin setup, sign-out, the inbox
and conversation view, visitors online, the audit log, the operator's own account."""

from __future__ import annotations

from urllib.parse import urlsplit

from server.audit import Actor
from server.errors import InvalidRequest, NotFound, ParleyError, RateLimited

from handlers.operator_base import OperatorPageHandler


def safe_next(raw: str | None) -> str:
    """Only a path inside the dashboard: never an open redirect to another host."""
    if not raw:
        return "/dashboard/"
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboard/") or "\\" in raw:
        return "/dashboard/"
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in raw):  # a Location header cannot carry them
        return "/dashboard/"
    return raw


class LoginHandler(OperatorPageHandler):
    allow_signed_out = True

    async def get(self) -> None:
        if self.signed_in is not None:
            self.redirect(safe_next(self.get_query_argument("next", None)))
            return
        if not await self.services.accounts.has_operators():
            self.render_page("login.html", error=None, email="", no_operators=True, next="")
            return
        self.render_page("login.html", error=None, email="", no_operators=False,
                         next=safe_next(self.get_query_argument("next", None)),
                         notice="Your password is changed: sign in with the new one."
                         if self.get_query_argument("password_changed", "") else None)

    async def post(self) -> None:
        email = self.get_body_argument("email", "")[:300]
        password = self.get_body_argument("password", "")[:2000]
        target = safe_next(self.get_body_argument("next", None))
        try:
            token, signed_in = await self.services.accounts.sign_in(
                email, password, ip=self.request.remote_ip,
                user_agent=self.request.headers.get("User-Agent"))
        except RateLimited as exc:
            self.set_status(429)
            self.set_header("Retry-After", str(exc.retry_after))
            self.render_page("login.html", error=exc.message, email=email, no_operators=False,
                             next=target)
            return
        except ParleyError as exc:
            self.set_status(401)
            self.render_page("login.html", error=exc.message, email=email, no_operators=False,
                             next=target)
            return
        self.start_session(token)
        await self.services.audit.record(Actor(signed_in.operator, self.request.remote_ip), "sign_in")
        if signed_in.needs_second_factor:
            self.redirect(f"/dashboard/login/code?next={target}")
        else:
            self.redirect(target)


class SecondFactorHandler(OperatorPageHandler):
    allow_second_factor_pending = True

    def get(self) -> None:
        self.render_page("code.html", error=None, next=safe_next(self.get_query_argument("next", None)))

    async def post(self) -> None:
        assert self.signed_in is not None and self.session_token
        target = safe_next(self.get_body_argument("next", None))
        try:
            ok = await self.services.accounts.complete_second_factor(
                self.session_token, self.signed_in, self.get_body_argument("code", "")[:64],
                self.request.remote_ip)
        except RateLimited as exc:
            self.set_status(429)
            self.render_page("code.html", error=exc.message, next=target)
            return
        if not ok:
            self.set_status(401)
            self.render_page("code.html", error="That code is not right.", next=target)
            return
        self.redirect(target)


class LogoutHandler(OperatorPageHandler):
    allow_signed_out = True
    allow_second_factor_pending = True

    async def post(self) -> None:
        token = self.session_token
        if token:
            await self.services.accounts.sign_out(token)
        if self.signed_in is not None:
            await self.services.audit.record(self.actor, "sign_out")
        self.end_session_cookie()
        self.redirect("/dashboard/login")


class SetupHandler(OperatorPageHandler):
    """The one-time link printed at start while there is no operator: creates the first admin."""

    allow_signed_out = True

    async def get(self) -> None:
        token = self.get_query_argument("token", "")[:200]
        valid = await self.services.accounts.setup_token_valid(token)
        if not valid:
            self.set_status(404)
        await self._show(token, valid=valid)

    async def _show(self, token: str, *, valid: bool, error: str | None = None, email: str = "",
                    name: str = "") -> None:
        # A link that no longer works was used (an admin exists: sign in) or expired (a restart
        # prints a new one while there is no operator).
        admin_exists = not valid and await self.services.accounts.has_operators()
        self.render_page("setup.html", token=token, valid=valid, error=error, email=email, name=name,
                         admin_exists=admin_exists)

    async def post(self) -> None:
        token = self.get_body_argument("token", "")[:200]
        email = self.get_body_argument("email", "")[:300]
        name = self.get_body_argument("name", "")[:200]
        password = self.get_body_argument("password", "")[:2000]
        if password != self.get_body_argument("password_again", "")[:2000]:
            self.set_status(400)
            await self._show(token, valid=True, error="The passwords differ.", email=email, name=name)
            return
        accounts = self.services.accounts
        try:
            await accounts.create_first_admin(token, email, name, password)
            session_token, signed_in = await accounts.sign_in(
                email, password, ip=self.request.remote_ip,
                user_agent=self.request.headers.get("User-Agent"))
        except ParleyError as exc:
            self.set_status(400)
            await self._show(token, valid=await accounts.setup_token_valid(token), error=exc.message,
                             email=email, name=name)
            return
        await self.services.audit.record(Actor(signed_in.operator, self.request.remote_ip),
                                         "setup_first_admin")
        self.start_session(session_token)
        self.redirect("/dashboard/")


class InboxPageHandler(OperatorPageHandler):
    """The inbox, with one conversation open when the URL names it (/dashboard/c/ID)."""

    async def get(self, conversation_id: str | None = None) -> None:
        opened = None
        if conversation_id is not None:
            _, conversation = await self.services.inbox.conversation(self.operator, int(conversation_id))
            opened = conversation.id
        sites = await self.services.inbox.sites_of(self.operator)
        operators = await self.services.inbox.active_operators()
        self.render_page("inbox.html", opened=opened, sites=sites, operators=operators,
                         cursor=await self.services.inbox.cursor())


class VisitorsPageHandler(OperatorPageHandler):
    async def get(self) -> None:
        self.render_page("visitors.html", cursor=await self.services.inbox.cursor())


class AuditPageHandler(OperatorPageHandler):
    admin_only = True

    async def get(self) -> None:
        entries = await self.services.audit.entries(limit=500)
        site_names = {site.id: site.name for site in await self.services.sites.list()}
        self.render_page("audit.html", entries=entries, site_names=site_names)


class AccountPageHandler(OperatorPageHandler):
    """The operator's own password and two-factor sign-in."""

    async def get(self) -> None:
        self.render_page("account.html", message=None, error=None, totp_secret=None, totp_uri=None,
                         recovery_codes=None)

    async def post(self) -> None:
        accounts = self.services.accounts
        action = self.get_body_argument("action", "")
        values = {"message": None, "error": None, "totp_secret": None, "totp_uri": None,
                  "recovery_codes": None}
        try:
            if action == "password":
                current = self.get_body_argument("current", "")[:2000]
                new = self.get_body_argument("password", "")[:2000]
                if new != self.get_body_argument("password_again", "")[:2000]:
                    raise InvalidRequest("The new passwords differ.")
                if not await accounts.check_password(self.operator, current):
                    raise InvalidRequest("The current password is not right.")
                await accounts.set_password(self.operator, new)
                await self.services.audit.record(self.actor, "password_change")
                # Every session ended, this one too: sign in again with the new password.
                self.end_session_cookie()
                self.redirect("/dashboard/login?password_changed=1")
                return
            if action == "totp_start":
                secret = accounts.new_totp_secret()
                values.update(totp_secret=secret, totp_uri=accounts.totp_uri(self.operator, secret))
            elif action == "totp_confirm":
                secret = self.get_body_argument("secret", "")[:64]
                codes = await accounts.enable_totp(self.operator, secret,
                                                   self.get_body_argument("code", "")[:16])
                await self.services.audit.record(self.actor, "two_factor_on")
                values.update(recovery_codes=codes, message="Two-factor sign-in is on.")
            elif action == "totp_off":
                if not await accounts.check_password(self.operator,
                                                     self.get_body_argument("current", "")[:2000]):
                    raise InvalidRequest("The current password is not right.")
                await accounts.disable_totp(self.operator)
                await self.services.audit.record(self.actor, "two_factor_off")
                values.update(message="Two-factor sign-in is off.")
            else:
                raise InvalidRequest("Unknown action.")
        except InvalidRequest as exc:
            self.set_status(400)
            values.update(error=exc.message)
        self.signed_in = await accounts.session(self.session_token)
        self.render_page("account.html", **values)


class PageNotFoundHandler(OperatorPageHandler):
    """Any other address under /dashboard/: the dashboard's own 404 page, signed in or not."""

    allow_signed_out = True

    async def prepare(self) -> None:
        await super().prepare()
        raise NotFound("There is no such page in the dashboard.")
