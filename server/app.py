"""The app factory: builds every service once and hands them to handlers. No module globals."""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import jinja2
import tornado.httputil
import tornado.web

from handlers.base import JsonHandler
from handlers.body_limit import (
    UNCOUNTED, BodyTooLarge, ChunkedBodyLimit, Drains, body_limit, declared_length, is_chunked)
from handlers.chat_stream import ChatStreamHandler
from handlers.headers import SecurityHeaders
from handlers.dashboard_admin import (
    SITE_KEY_PATTERN,
    ContactsHandler,
    KnowledgeHandler,
    KnowledgeJobsHandler,
    NumbersHandler,
    OperatorsPageHandler,
    ProactiveRulesHandler,
    SiteAIHandler,
    SiteHoursHandler,
    SitePageHandler,
    SitesPageHandler,
    VisitorDataHandler,
)
from handlers.dashboard_api import (
    ConversationActionHandler,
    ConversationApiHandler,
    DashboardApiNotFoundHandler,
    FeedHandler,
    InboxApiHandler,
    MeHandler,
    ProactiveApiHandler,
    VisitorsApiHandler,
)
from handlers.dashboard_pages import (
    AccountPageHandler,
    AuditPageHandler,
    InboxPageHandler,
    LoginHandler,
    LogoutHandler,
    PageNotFoundHandler,
    SecondFactorHandler,
    SetupHandler,
    VisitorsPageHandler,
)
from handlers.health import HealthHandler, ReadyHandler
from handlers.openapi import OPENAPI_PATH, OpenApiHandler
from handlers.pages import (
    DashboardFileHandler,
    DemoPageHandler,
    UploadedFileHandler,
    WidgetFileHandler,
    WidgetScriptHandler,
    widget_script,
)
from handlers.upload import UploadImageHandler
from handlers.widget_api import (
    ApiNotFoundHandler,
    BlockStatusHandler,
    ContactHandler,
    EmailHandler,
    HistoryHandler,
    OperatorMessagesHandler,
    PendingProactiveHandler,
    RateCommentHandler,
    RateHandler,
)
from handlers.widget_config import WidgetConfigHandler
from server.accounts import AccountService, load_cookie_secret
from server.admission import TakeTurn, Turns, pass_turn
from server.ai.caps import CapChecker
from server.ai.engine import AIEngine
from server.ai.knowledge import KnowledgeBase
from server.ai.offline import OfflineAnswerer
from server.ai.providers import ProviderRegistry
from server.ai.settings import global_model_config, model_limits
from server.backends import build_blob_store, build_store
from server.blobs import BlobStore
from server.chat import ChatService, Limits
from server.config import Config
from server.contacts import Contacts
from server.demo import DEMO_SITE_NAME
from server.audit import AuditLog
from server.feed import EventFeed, build_feed
from server.hub import Hub
from server.inbox import InboxService
from server.insights import Insights
from server.operator_admin import OperatorAdmin
from server.opening_hours import OpeningHoursService
from server.operators import OperatorService
from server.privacy import PrivacyService
from server.proactive import ProactiveRules
from server.proxies import ProxyAwareApplication, TrustedProxies
from server.readiness import Readiness
from server.site_admin import SiteAdmin
from server.site_ai import SiteAI
from server.site_knowledge import SiteKnowledge
from server.sites import SiteService
from server.uploads import Uploads
from server.store.base import Store

log = logging.getLogger(__name__)
access_log = logging.getLogger("tornado.access")

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Services:
    config: Config
    store: Store
    hub: Hub
    bridge: EventFeed
    knowledge: KnowledgeBase
    ai: AIEngine
    blobs: BlobStore
    sites: SiteService
    chat: ChatService
    operators: OperatorService
    rules: ProactiveRules
    accounts: AccountService
    inbox: InboxService
    audit: AuditLog
    privacy: PrivacyService
    site_admin: SiteAdmin
    site_ai: SiteAI
    operator_admin: OperatorAdmin
    contacts: Contacts
    site_knowledge: SiteKnowledge
    insights: Insights
    hours: OpeningHoursService
    readiness: Readiness

    async def close(self) -> None:
        await self.chat.shutdown()
        await self.site_knowledge.close()
        await self.bridge.stop()
        await self.ai.close()
        await self.blobs.close()
        await self.store.close()


async def build_services(config: Config, *, limits: Limits | None = None) -> Services:
    store = build_store(config)
    await store.open()
    blobs = build_blob_store(config)
    uploads = Uploads(config.data_dir / "uploading")
    uploads.remove_leftovers()
    try:
        await blobs.start()
    except BaseException:
        await store.close()
        raise
    hub = Hub(store)
    bridge = build_feed(hub, store, poll_interval=config.event_poll_interval)
    knowledge = KnowledgeBase(store)
    # The global model (PARLEY_AI_*) when configured, else the offline answerer; sites may override.
    providers = ProviderRegistry(OfflineAnswerer(chunk_delay=config.offline_chunk_delay),
                                 global_model_config(config), limits=model_limits(config))
    audit = AuditLog(store)
    sites = SiteService(store)
    hours = OpeningHoursService(store, sites, audit)
    ai = AIEngine(knowledge, providers.default, provider_for_site=providers.for_site,
                  caps=CapChecker(store), on_close=providers.close,
                  someone_can_answer=hours.someone_can_answer)
    accounts = AccountService(store, idle_timeout=config.session_idle_minutes * 60)
    operators = OperatorService(store, hub, audit)
    return Services(
        config=config, store=store, hub=hub, bridge=bridge, knowledge=knowledge, ai=ai, blobs=blobs,
        sites=sites,
        chat=ChatService(store, hub, ai, blobs, limits, uploads=uploads),
        operators=operators,
        rules=ProactiveRules(sites),
        accounts=accounts,
        inbox=InboxService(store, hub),
        audit=audit,
        privacy=PrivacyService(store, blobs, audit),
        site_admin=SiteAdmin(sites, audit),
        site_ai=SiteAI(sites, config, audit),
        operator_admin=OperatorAdmin(store, accounts, operators, audit),
        contacts=Contacts(store, audit),
        site_knowledge=SiteKnowledge(store, knowledge, audit, ai, allow_private=config.kb_allow_private,
                                     origin=hub.origin),
        insights=Insights(store),
        hours=hours,
        readiness=Readiness(store, bridge, uploads, blobs),
    )


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The access log without query strings: a site_key with a session_id reads a conversation,
    and page URLs can carry personal data."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    access_log.log(
        level, "%d %s %s (%s) %.1fms", status, request.method, request.path, request.remote_ip,
        1000.0 * request.request_time())


def dashboard_routes(services: Services) -> list[Any]:
    dash = {"services": services}
    conversation = r"(?P<conversation_id>[0-9]{1,18})"
    return [
        (r"/dashboard", tornado.web.RedirectHandler, {"url": "/dashboard/"}),
        (r"/dashboard/", InboxPageHandler, dash),
        (rf"/dashboard/c/{conversation}", InboxPageHandler, dash),
        (r"/dashboard/login", LoginHandler, dash),
        (r"/dashboard/login/code", SecondFactorHandler, dash),
        (r"/dashboard/logout", LogoutHandler, dash),
        (r"/dashboard/setup", SetupHandler, dash),
        (r"/dashboard/visitors", VisitorsPageHandler, dash),
        (r"/dashboard/audit", AuditPageHandler, dash),
        (r"/dashboard/account", AccountPageHandler, dash),
        (r"/dashboard/events", FeedHandler, dash),
        (r"/dashboard/api/me", MeHandler, dash),
        (r"/dashboard/api/inbox", InboxApiHandler, dash),
        (r"/dashboard/api/visitors", VisitorsApiHandler, dash),
        (r"/dashboard/api/proactive", ProactiveApiHandler, dash),
        (rf"/dashboard/api/conversations/{conversation}", ConversationApiHandler, dash),
        (rf"/dashboard/api/conversations/{conversation}/(?P<action>[a-z]+)",
         ConversationActionHandler, dash),
        (r"/dashboard/sites", SitesPageHandler, dash),
        (rf"/dashboard/sites/{SITE_KEY_PATTERN}", SitePageHandler, dash),
        (rf"/dashboard/sites/{SITE_KEY_PATTERN}/visitor", VisitorDataHandler, dash),
        (rf"/dashboard/sites/{SITE_KEY_PATTERN}/hours", SiteHoursHandler, dash),
        (rf"/dashboard/sites/{SITE_KEY_PATTERN}/ai", SiteAIHandler, dash),
        (r"/dashboard/operators", OperatorsPageHandler, dash),
        (rf"/dashboard/sites/{SITE_KEY_PATTERN}/knowledge", KnowledgeHandler, dash),
        (rf"/dashboard/sites/{SITE_KEY_PATTERN}/knowledge/jobs", KnowledgeJobsHandler, dash),
        (rf"/dashboard/sites/{SITE_KEY_PATTERN}/contacts", ContactsHandler, dash),
        (rf"/dashboard/sites/{SITE_KEY_PATTERN}/rules", ProactiveRulesHandler, dash),
        (r"/dashboard/numbers", NumbersHandler, dash),
        (r"/dashboard/static/(.+)", DashboardFileHandler, {"path": str(ROOT / "static" / "dashboard")}),
        (r"/dashboard/api/.*", DashboardApiNotFoundHandler, dash),
        (r"/dashboard/.*", PageNotFoundHandler, dash),
    ]



class InFlight(tornado.httputil.HTTPMessageDelegate):
    """A request's handler delegate, reporting when its client leaves while its body is still
    coming: its handler then never finishes, so log_request never says the request ended."""

    def __init__(self, delegate: tornado.httputil.HTTPMessageDelegate, left: Callable[[], None]) -> None:
        self.delegate = delegate
        self.left = left

    def headers_received(self, start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
                         headers: tornado.httputil.HTTPHeaders) -> Awaitable[None] | None:
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()
        self.left()


class ParleyApplication(ProxyAwareApplication):
    """Counts the requests in progress, so a shutdown can let the last responses go out; runs each
    request in its address's turn (server/admission.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.turns = Turns()
        self.drains = Drains()
        # Weak: a request that somehow ends unseen cannot be kept alive, or counted, for ever.
        self._in_flight: weakref.WeakSet[tornado.httputil.HTTPServerRequest] = weakref.WeakSet()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _ended(self, request: tornado.httputil.HTTPServerRequest) -> None:
        self._in_flight.discard(request)
        if not self._in_flight:
            self._idle.set()

    def get_handler_delegate(  # type: ignore[override]
            self, request: tornado.httputil.HTTPServerRequest, target_class: type[tornado.web.RequestHandler],
            target_kwargs: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> InFlight:
        """Called once a request's headers are in, before any of its body is read: its route's
        body limit applies from here on (handlers/body_limit.py), and a body declared larger is
        answered 413 by BodyTooLarge in place of the route's handler. A body without a length, to
        a route that takes its body whole, is counted by ChunkedBodyLimit, which hands it to
        BodyTooLarge once it passes the limit; one to a route that streams it is counted by its
        handler (`counts_its_body`). Tornado's own limit would answer either with a bare 400."""
        self._in_flight.add(request)
        self._idle.clear()
        limit = body_limit(target_class, request.method)
        set_limit = getattr(request.connection, "set_max_body_size", None)
        if set_limit is not None:
            set_limit(limit)
        refusal = {"limit": limit, "json_errors": issubclass(target_class, JsonHandler)}
        declared = declared_length(request)
        if declared is not None and declared > limit:
            target_class, target_kwargs = BodyTooLarge, refusal
        delegate = super().get_handler_delegate(request, target_class, target_kwargs, *args, **kwargs)
        if set_limit is not None and is_chunked(request):
            if not target_class._stream_request_body:  # counted by ChunkedBodyLimit, kept up to `limit`
                set_limit(UNCOUNTED)
                refuse = functools.partial(super().get_handler_delegate, request, BodyTooLarge)
                delegate = ChunkedBodyLimit(delegate, limit,
                                            lambda received: refuse({**refusal, "received": received}))
            elif getattr(target_class, "counts_its_body", False):  # counted by the handler itself
                set_limit(UNCOUNTED)
        return InFlight(delegate, lambda: self._ended(request))

    def request_delegate(self, server_conn: object,
                         request_conn: tornado.httputil.HTTPConnection) -> tornado.httputil.HTTPMessageDelegate:
        return TakeTurn(super().request_delegate(server_conn, request_conn), request_conn, self.turns)

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        super().log_request(handler)  # called once as each request ends
        pass_turn()
        self._ended(handler.request)

    async def idle(self, timeout: float) -> bool:
        """Until no request is in progress; False if some still are after `timeout`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def make_app(services: Services, **overrides: Any) -> ParleyApplication:
    config = services.config
    api = {"chat": services.chat, "sites": services.sites}
    routes: list[Any] = [
        (r"/api/v1/chat/stream", ChatStreamHandler, api),
        (r"/api/v1/chat/history", HistoryHandler, api),
        (r"/api/v1/chat/email", EmailHandler, api),
        (r"/api/v1/chat/contact", ContactHandler, api),
        (r"/api/v1/chat/operator-messages", OperatorMessagesHandler, api),
        (r"/api/v1/chat/block-status", BlockStatusHandler, api),
        (r"/api/v1/chat/pending-proactive", PendingProactiveHandler, api),
        (r"/api/v1/chat/upload-image", UploadImageHandler, api),
        (r"/api/v1/chat/rate", RateHandler, api),
        (r"/api/v1/chat/rate/comment", RateCommentHandler, api),
        (r"/api/v1/chat/config", WidgetConfigHandler, {**api, "hours": services.hours}),
        (r"/api/v1/openapi\.json", OpenApiHandler, {"document": OPENAPI_PATH.read_bytes()}),
        (r"/api/.*", ApiNotFoundHandler, api),
        (r"/healthz", HealthHandler, {"hub": services.hub}),
        (r"/readyz", ReadyHandler, {"readiness": services.readiness}),
        (r"/uploads/(.+)", UploadedFileHandler, {"blobs": services.blobs}),
        (r"/widget/widget\.js", WidgetScriptHandler, {"script": widget_script(ROOT / "static" / "widget")}),
        (r"/widget/(.+)", WidgetFileHandler, {"path": str(ROOT / "static" / "widget")}),
        (r"/(?:demo)?", DemoPageHandler, {"sites": services.sites, "demo_site_name": DEMO_SITE_NAME}),
        *dashboard_routes(services),
    ]
    settings: dict[str, Any] = {
        "jinja": jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(ROOT / "templates")),
            autoescape=jinja2.select_autoescape(default=True),
        ),
        "public_url": config.public_url,
        "cookie_secret": load_cookie_secret(config.data_dir, config.cookie_secret),
        # The dashboard's XSRF cookie stays on /dashboard: the widget API never sees a cookie.
        "xsrf_cookie_kwargs": {"httponly": True, "samesite": "Lax", "path": "/dashboard"},
        "sse_keepalive": config.sse_keepalive,
        "services": services,
        "trusted_proxies": TrustedProxies(config.proxy_networks),
        "log_function": log_request,
    }
    settings.update(overrides)
    app = ParleyApplication(routes, **settings)
    app.add_transform(SecurityHeaders)
    return app
