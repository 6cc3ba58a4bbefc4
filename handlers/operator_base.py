"""The dashboard's bases: who is signed in, XSRF on every POST, the safety headers, and errors as
pages (for browsers) or JSON (for the page's own requests and the live feed).

The widget's API stays cookie-less (handlers/base.py); only /dashboard/ sets or reads cookies.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import tornado.web

from server.accounts import SignedIn
from server.audit import Actor
from server.errors import Forbidden, ParleyError, Unauthorized
from server.store.models import Operator

from handlers.base import JsonHandler

if TYPE_CHECKING:
    from server.app import Services

log = logging.getLogger(__name__)

SESSION_COOKIE = "parley_session"
COOKIE_MAX_AGE_DAYS = 31  # the signature's own limit; the idle timeout ends sessions far sooner

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: https: http:",  # visitors' images may live on an S3 host
    "connect-src 'self'",
    "object-src 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
))


class OperatorMixin(tornado.web.RequestHandler):
    """Reads the session cookie; `self.signed_in` is who is signed in (None when nobody)."""

    signed_in: SignedIn | None = None
    allow_signed_out = False  # the sign-in and setup pages
    allow_second_factor_pending = False  # the page that asks for the code
    admin_only = False

    def initialize(self, services: Services, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        self.services = services

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Cache-Control", "no-store")

    @property
    def secure_cookies(self) -> bool:
        public = self.services.config.public_url or ""
        return self.request.protocol == "https" or public.startswith("https://")

    def set_cookie(self, name: str, value: str | bytes, *args: Any, **kwargs: Any) -> None:
        # Every dashboard cookie, Tornado's own _xsrf included, is Secure when served over HTTPS.
        if self.secure_cookies:
            kwargs.setdefault("secure", True)
        super().set_cookie(name, value, *args, **kwargs)

    @property
    def session_token(self) -> str | None:
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=COOKIE_MAX_AGE_DAYS)
        return raw.decode() if raw else None

    def start_session(self, token: str) -> None:
        self.set_signed_cookie(SESSION_COOKIE, token, expires_days=None, httponly=True,
                               samesite="Lax", secure=self.secure_cookies, path="/dashboard")

    def end_session_cookie(self) -> None:
        self.clear_cookie(SESSION_COOKIE, path="/dashboard")

    @property
    def operator(self) -> Operator:
        assert self.signed_in is not None
        return self.signed_in.operator

    @property
    def actor(self) -> Actor:
        return Actor(self.operator, self.request.remote_ip)

    async def prepare(self) -> None:
        if self.request.method not in ("GET", "HEAD", "OPTIONS"):
            self.check_xsrf_cookie()  # every dashboard POST, signed in or not (login CSRF too)
        self.signed_in = await self.services.accounts.session(self.session_token)
        if self.signed_in is not None and self.signed_in.needs_second_factor \
                and not self.allow_second_factor_pending:
            self.not_signed_in(second_factor=True)
            return
        if self.signed_in is None and not self.allow_signed_out:
            self.not_signed_in()
            return
        if self.admin_only and not self.operator.is_admin:
            raise Forbidden("Only admins can see this.")

    def not_signed_in(self, second_factor: bool = False) -> None:
        raise Unauthorized("Sign in to the dashboard first.")


class OperatorPageHandler(OperatorMixin):
    """HTML pages: signed-out visitors are sent to the sign-in page; errors are small pages."""

    def not_signed_in(self, second_factor: bool = False) -> None:
        target = "/dashboard/login/code" if second_factor else "/dashboard/login"
        if self.request.method in ("GET", "HEAD"):
            self.redirect(f"{target}?next={quote(self.request.uri or '/dashboard/', safe='')}")
        else:
            self.redirect(target)  # redirect() finishes the response

    def render_page(self, template: str, **values: Any) -> None:
        signed_in = self.signed_in
        page = self.settings["jinja"].get_template(f"dashboard/{template}").render(
            operator=signed_in.operator if signed_in and not signed_in.needs_second_factor else None,
            xsrf_token=self.xsrf_token.decode(), path=self.request.path, **values)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ParleyError):
            self.set_status(error.status)
            message = error.message
        elif isinstance(error, tornado.web.HTTPError) and status_code < 500:
            message = error.reason or self._reason
        else:
            message = "Something went wrong on our side."
        self.clear_header("Content-Type")
        self.render_page("error.html", status=self.get_status(), message=message)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ParleyError):
            log.info("%s %s -> %d %s", self.request.method, self.request.path, value.status, value.code)
        else:
            super().log_exception(typ, value, tb)


class OperatorApiHandler(OperatorMixin, JsonHandler):
    """The page's own JSON requests and the live feed: 401 when signed out, JSON errors."""

    def check_xsrf_cookie(self) -> None:
        try:
            super().check_xsrf_cookie()
        except tornado.web.HTTPError:
            raise Forbidden("The request lacks the dashboard's XSRF token; reload the page.") from None
