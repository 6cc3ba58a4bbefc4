"""The admins' pages for running a site: its settings and key, and one visitor's data (export,
erase). Plain forms posted with the XSRF token: no script, so nothing for the CSP to allow."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import tornado.web
from tornado.httputil import HTTPInputError, parse_body_arguments

from server.accounts import MIN_PASSWORD
from server import contacts as contact_lists
from server.errors import Forbidden, InvalidRequest, ParleyError
from server.privacy import VisitorNotFound
from server.insights import parse_range
from server.knowledge import MAX_DOCUMENT_BYTES
from server.site_knowledge import still_fetching
from server.opening_hours import AVAILABLE_WHEN_LABELS, WEEKDAY_NAMES, WEEKDAYS
from server.opening_hours import FORM_FIELDS as HOURS_FORM_FIELDS
from server.opening_hours import form_values as hours_form_values
from server.proactive import site_rules
from server.site_admin import MEGABYTE
from server.site_ai import form_values as ai_form_values
from server.sites import DEFAULT_SETTINGS, embed_snippet
from server.store.models import Site
from server.validation import SESSION_ID_RE

from handlers.body_limit import ADMIN_FORM_BODY_LIMIT, AnswersBeforeBody
from handlers.operator_base import OperatorApiHandler, OperatorPageHandler

NOTICE = "notice"  # the knowledge page's "what just happened", signed into its redirect
NOTICE_MAX_AGE_DAYS = 1 / 24

SITE_KEY_PATTERN = r"(?P<site_key>sk_[A-Za-z0-9_-]{8,64})"
# A knowledge document and the rest of its form (the multipart framing, the token, the action).
KNOWLEDGE_BODY_LIMIT = MAX_DOCUMENT_BYTES + 64 * 1024


class SiteAdminHandler(OperatorPageHandler):
    admin_only = True
    max_body_bytes = ADMIN_FORM_BODY_LIMIT

    @property
    def base_url(self) -> str:
        return (self.services.config.public_url or f"{self.request.protocol}://{self.request.host}").rstrip("/")

    async def site(self, site_key: str) -> Site:
        return await self.services.sites.get_for_admin(site_key)

    async def show_site_page(self, site: Site, *, values: dict[str, str] | None = None,
                             error: str | None = None, notice: str | None = None,
                             hours: dict[str, str] | None = None) -> None:
        """The site page: settings, opening hours (with whether a person can answer now), embed
        snippet and key, one visitor's data."""
        availability = await self.services.hours.availability(site)
        self.render_page("site_settings.html", site=site, values=values or form_values(site), error=error,
                         notice=notice, snippet=embed_snippet(site, self.base_url),
                         hours=hours or hours_form_values(availability.hours), availability=availability,
                         available_when=AVAILABLE_WHEN_LABELS, weekdays=list(zip(WEEKDAYS, WEEKDAY_NAMES)),
                         time_zones=self.services.hours.time_zones())

    def form(self, *names: str) -> dict[str, str]:
        return {name: self.get_body_argument(name, "")[:5000] for name in names}


class SitesPageHandler(SiteAdminHandler):
    async def get(self) -> None:
        self.render_page("site_list.html", sites=await self.services.sites.list(), error=None)

    async def post(self) -> None:
        try:
            site = await self.services.site_admin.create(self.get_body_argument("name", "")[:300], self.actor)
        except ParleyError as exc:
            self.set_status(400)
            self.render_page("site_list.html", sites=await self.services.sites.list(), error=exc.message)
            return
        self.redirect(f"/dashboard/sites/{site.site_key}?saved=created")


SITE_FIELDS = ("name", "origins", "title", "greeting", "color", "position", "lang", "upload_mb",
               "retention_days")


def form_values(site: Site) -> dict[str, str]:
    settings = {**DEFAULT_SETTINGS, **site.settings}
    upload = settings.get("upload_max_bytes")
    return {"name": site.name, "origins": "\n".join(site.allowed_origins),
            "title": str(settings["title"]), "greeting": str(settings["greeting"]),
            "color": str(settings["color"]), "position": str(settings["position"]),
            "lang": str(settings["lang"]),
            "upload_mb": str(upload // MEGABYTE) if isinstance(upload, int) else "",
            "retention_days": str(settings.get("retention_days") or "")}


class SitePageHandler(SiteAdminHandler):
    async def get(self, site_key: str) -> None:
        notices = {"saved": "Saved. The widget shows it on its next load.", "created": "Site created.",
                   "hours": "Opening hours saved. The widget shows them on its next load.",
                   "rotated": "New key made: the old one no longer works. Update the snippet on your pages.",
                   "erased": "The visitor's data is erased."}
        await self.show_site_page(await self.site(site_key), notice=notices.get(self.get_query_argument("saved", "")))

    async def post(self, site_key: str) -> None:
        site = await self.site(site_key)
        admin = self.services.site_admin
        if self.get_body_argument("action", "") == "rotate":
            site = await admin.rotate_key(site, self.actor)
            self.redirect(f"/dashboard/sites/{site.site_key}?saved=rotated")
            return
        values = self.form(*SITE_FIELDS)
        try:
            await admin.edit(site, values, self.actor)
        except ParleyError as exc:
            self.set_status(400)
            await self.show_site_page(site, values=values, error=exc.message)
            return
        self.redirect(f"/dashboard/sites/{site.site_key}?saved=saved")


class SiteHoursHandler(SiteAdminHandler):
    """POST the site page's Opening hours form: weekly hours, closed dates, zone, the rule."""

    async def get(self, site_key: str) -> None:
        self.redirect(f"/dashboard/sites/{site_key}#hours")

    async def post(self, site_key: str) -> None:
        site = await self.site(site_key)
        values = self.form(*HOURS_FORM_FIELDS)
        try:
            await self.services.hours.save(site, values, self.actor)
        except ParleyError as exc:
            self.set_status(400)
            await self.show_site_page(site, error=exc.message, hours=values)
            return
        self.redirect(f"/dashboard/sites/{site.site_key}?saved=hours#hours")


class VisitorDataHandler(SiteAdminHandler):
    """POST export: the JSON as a download; POST erase (with the session typed twice): gone."""

    async def post(self, site_key: str) -> None:
        site = await self.site(site_key)
        session_id = self.get_body_argument("session", "").strip()[:100]
        action = self.get_body_argument("action", "")
        privacy = self.services.privacy
        try:
            if not SESSION_ID_RE.match(session_id):
                raise ParleyError("A session id looks like sess_ followed by 16 to 64 letters, digits, _ or -.")
            if action == "export":
                data = await privacy.export(site, session_id, base_url=self.base_url, actor=self.actor)
                self.set_header("Content-Type", "application/json; charset=utf-8")
                self.set_header("Content-Disposition", f'attachment; filename="parley-{session_id}.json"')
                self.finish(json.dumps(data, ensure_ascii=False, indent=2))
                return
            if action != "erase":
                raise ParleyError("Choose Export or Erase.")
            if self.get_body_argument("confirm", "").strip() != session_id:
                raise ParleyError("Type the session id again to confirm the erase.")
            try:
                await privacy.erase(site, session_id, actor=self.actor)
            except VisitorNotFound as exc:  # a mistyped id in the form: 400 here, as it always was
                raise InvalidRequest(exc.message) from exc
        except ParleyError as exc:
            self.set_status(exc.status)
            await self.show_site_page(site, error=exc.message)
            return
        self.redirect(f"/dashboard/sites/{site.site_key}?saved=erased")


class SiteAIHandler(SiteAdminHandler):
    """The site's model settings (the key write-only, shown masked) and Test connection."""

    def show(self, site: Site, **values: object) -> None:
        self.render_page("site_ai.html", site=site, values=ai_form_values(site),
                         **{"error": None, "notice": None, "result": None, **values})

    async def get(self, site_key: str) -> None:
        saved = self.get_query_argument("saved", "") == "1"
        self.show(await self.site(site_key), notice="Saved." if saved else None)

    async def post(self, site_key: str) -> None:
        site = await self.site(site_key)
        if self.get_body_argument("action", "") == "test":
            self.show(site, result=await self.services.site_ai.test_connection(site))
            return
        form = self.form(*AI_FIELDS)
        try:
            await self.services.site_ai.save(site, form, self.actor)
        except (ParleyError, ValueError) as exc:
            self.set_status(400)
            self.show(site, error=getattr(exc, "message", None) or str(exc))
            return
        self.redirect(f"/dashboard/sites/{site.site_key}/ai?saved=1")


AI_FIELDS = ("base_url", "model", "api_key", "remove_key", "system_prompt", "temperature", "max_tokens",
             "handoff_phrases", "handoff_when_unsure", "redact_pii", "replies_per_session_hour",
             "replies_per_site_day", "max_input_chars")


class OperatorsPageHandler(OperatorPageHandler):
    """Every account with its role, sites and state; one small form per change."""

    admin_only = True

    async def show(self, error: str | None = None, notice: str | None = None,
                   adding: dict[str, Any] | None = None) -> None:
        """`adding`: what was typed into a refused Add form, to fill it again (never the password)."""
        self.render_page("operators.html", operators=await self.services.operator_admin.list(),
                         sites=await self.services.sites.list(), error=error, notice=notice,
                         adding=adding or {}, min_password=MIN_PASSWORD)

    async def get(self) -> None:
        await self.show(notice="Saved." if self.get_query_argument("saved", "") else None)

    async def post(self) -> None:
        admin = self.services.operator_admin
        action = self.get_body_argument("action", "")
        try:
            if action == "add":
                await admin.add(self.get_body_argument("email", "")[:300], self.get_body_argument("name", "")[:200],
                                self.get_body_argument("role", ""), self.get_body_argument("password", "")[:2000],
                                self.site_ids(), self.actor)
            else:
                try:
                    operator = await admin.get(int(self.get_body_argument("operator_id", "")))
                except ValueError:
                    raise InvalidRequest("No such operator.") from None
                if action in ("disable", "enable"):
                    await admin.set_disabled(operator, action == "disable", self.actor)
                elif action == "password":
                    await admin.reset_password(operator, self.get_body_argument("password", "")[:2000], self.actor)
                elif action == "role":
                    await admin.set_role(operator, self.get_body_argument("role", ""), self.actor)
                elif action == "sites":
                    await admin.set_sites(operator, self.site_ids(), self.actor)
                else:
                    raise InvalidRequest("Unknown action.")
        except ParleyError as exc:
            self.set_status(exc.status)
            adding = None
            if action == "add":
                adding = {"email": self.get_body_argument("email", "")[:300],
                          "name": self.get_body_argument("name", "")[:200],
                          "role": self.get_body_argument("role", ""),
                          "sites": set(self.get_body_arguments("site")[:1000])}
            await self.show(error=exc.message, adding=adding)
            return
        self.redirect("/dashboard/operators?saved=1")

    def site_ids(self) -> list[int]:
        try:
            return [int(raw) for raw in self.get_body_arguments("site")[:1000]]
        except ValueError:
            raise InvalidRequest("Unknown site.") from None


class ProactiveRulesHandler(SiteAdminHandler):
    """A site's proactive rules: list, add, edit, remove (page path, delay, text)."""

    async def get(self, site_key: str) -> None:
        site = await self.site(site_key)
        self.render_page("site_rules.html", site=site, rules=site_rules(site), error=None, typed=None,
                         notice="Saved." if self.get_query_argument("saved", "") else None)

    async def post(self, site_key: str) -> None:
        site = await self.site(site_key)
        rules = self.services.rules
        action = self.get_body_argument("action", "")
        rule_id = self.get_body_argument("rule_id", "")[:40]
        try:
            if action == "remove":
                found = await rules.remove(site, rule_id)
            else:
                try:
                    delay = float(self.get_body_argument("delay", ""))
                except ValueError:
                    raise InvalidRequest("The delay is a number of seconds.") from None
                path, text = self.get_body_argument("path", "")[:600], self.get_body_argument("text", "")[:1200]
                if action == "add":
                    rule_id = (await rules.add(site, path, delay, text)).id
                    found = True
                elif action == "edit":
                    found = await rules.edit(site, rule_id, path, delay, text)
                else:
                    raise InvalidRequest("Unknown action.")
            if not found:
                raise InvalidRequest("No such rule (someone may have removed it).")
        except ParleyError as exc:
            self.set_status(exc.status)
            site = await self.site(site_key)
            # A refused new rule keeps what was typed, to correct rather than type again.
            typed = {name: self.get_body_argument(name, "")[:1200] for name in ("path", "delay", "text")} \
                if action == "add" else None
            self.render_page("site_rules.html", site=site, rules=site_rules(site), error=exc.message,
                             notice=None, typed=typed)
            return
        await self.services.audit.record(self.actor, f"proactive_rule.{action}", site_id=site.id, target=rule_id)
        self.redirect(f"/dashboard/sites/{site.site_key}/rules?saved=1")


class ContactsHandler(SiteAdminHandler):
    """GET: contacts (or ?view=ratings) with search; ?format=csv downloads them (audited)."""

    async def get(self, site_key: str) -> None:
        site = await self.site(site_key)
        rated = self.get_query_argument("view", "") == "ratings"
        search = self.get_query_argument("q", "").strip()[:200]
        contacts = self.services.contacts
        if self.get_query_argument("format", "") == "csv":
            body = await contacts.csv(site, rated=rated, search=search, actor=self.actor)
            name = "ratings" if rated else "contacts"
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", f'attachment; filename="parley-{name}.csv"')
            self.finish(body)
            return
        rows, more = await contacts.page(site, rated=rated, search=search)
        self.render_page("site_contacts.html", site=site, rated=rated, search=search, rows=rows,
                         more=more, csv_rows=contact_lists.MAX_ROWS)


class NumbersHandler(OperatorPageHandler):
    """A site's numbers over a date range. Agents see those of their own sites (aggregates only,
    nothing about one visitor); another site's are 403."""

    async def get(self) -> None:
        sites = await self.services.inbox.sites_of(self.operator)
        site_key = self.get_query_argument("site", "")[:100]
        first, last = self.get_query_argument("from", "")[:20], self.get_query_argument("to", "")[:20]
        site = next((s for s in sites if s.site_key == site_key), None if site_key else (sites or [None])[0])
        if site is None and site_key:
            raise Forbidden("You are not assigned to this site.")
        numbers, error = None, None
        if site is not None:
            insights = self.services.insights
            try:
                dates = parse_range(first, last, insights.today(site))
            except ParleyError as exc:
                self.set_status(exc.status)
                error = exc.message
            else:
                numbers = await insights.numbers(site, dates)
                first, last = dates.first.isoformat(), dates.last.isoformat()
        self.render_page("numbers.html", sites=sites, numbers=numbers, first=first, last=last, error=error)


@tornado.web.stream_request_body
class KnowledgeHandler(AnswersBeforeBody, SiteAdminHandler):
    """Documents, uploads, background fetches, Try the assistant, and the knowledge gaps with Add
    an answer.

    Its forms' bodies (a document of up to MAX_DOCUMENT_BYTES) are streamed in, so who is asking is
    known before any of a body is read: a stranger, an expired session or an agent is answered at
    once (prepare(); the body is then read and dropped, see AnswersBeforeBody), and only a signed-in
    admin's body is kept. The form's XSRF token travels in the body, so it is checked once the body
    is in, before anything is done with it."""

    max_body_bytes = KNOWLEDGE_BODY_LIMIT

    def initialize(self, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self._body = bytearray()  # up to max_body_bytes (413 past it: a declared length before the body)
        self._form_read = False

    def check_xsrf_cookie(self) -> None:
        if self._form_read or self.request.method in ("GET", "HEAD", "OPTIONS"):
            super().check_xsrf_cookie()
        # A POST's token is in its body: read_form() checks it.

    def take_chunk(self, chunk: bytes) -> None:
        self._body += chunk

    def read_form(self) -> None:
        """Parse the body read so far as the form it is, then check its XSRF token."""
        request, body = self.request, bytes(self._body)
        self._body = bytearray()
        request.body = body
        try:
            parse_body_arguments(request.headers.get("Content-Type", ""), body, request.body_arguments,
                                 request.files, request.headers)
        except HTTPInputError:
            raise InvalidRequest("The form could not be read; reload the page and try again.") from None
        for name, values in request.body_arguments.items():
            request.arguments.setdefault(name, []).extend(values)
        self._form_read = True
        self.check_xsrf_cookie()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._body = bytearray()

    async def show(self, site: Site, **values: object) -> None:
        knowledge = self.services.site_knowledge
        jobs = await knowledge.fetch_jobs(site)
        self.render_page("site_knowledge.html", site=site, documents=await knowledge.documents(site),
                         jobs=jobs, fetching=still_fetching(jobs),
                         gaps=await knowledge.gaps(site), max_upload=MAX_DOCUMENT_BYTES,
                         **{"error": None, "notice": None, "tried": None, "question": "", **values})

    async def get(self, site_key: str) -> None:
        if self.answered:  # in prepare(), and the body that came with it read and dropped since
            return
        site = await self.site(site_key)
        question = self.get_query_argument("q", "").strip()[:2000]
        if question:
            tried = await self.services.site_knowledge.try_question(site, question)
            await self.show(site, tried=tried, question=question)
            return
        await self.show(site, notice=self._notice(self.get_query_argument("notice", "")))

    async def post(self, site_key: str) -> None:
        if self.answered:  # in prepare(), and the body that came with it read and dropped since
            return
        self.read_form()
        site = await self.site(site_key)
        knowledge = self.services.site_knowledge
        action = self.get_body_argument("action", "")
        try:
            if action == "add_url":
                await knowledge.fetch_in_background(site, self.get_body_argument("url", ""), self.actor)
                notice = "Fetching in the background: its progress shows below."
            elif action == "upload":
                files = self.request.files.get("file") or []
                if not files or not files[0].filename:
                    raise InvalidRequest("Choose a file to upload.")
                document = await knowledge.add_upload(site, files[0].filename, files[0].body, self.actor)
                notice = f"Added {document.title}."
            elif action == "add_text":
                await knowledge.add_text(site, self.get_body_argument("title", "")[:300],
                                         self.get_body_argument("text", "")[:200_000], self.actor)
                notice = "Added."
            elif action == "remove":
                try:
                    document_id = int(self.get_body_argument("document_id", ""))
                except ValueError:
                    raise InvalidRequest("No such document.") from None
                if not await knowledge.remove(site, document_id, self.actor):
                    raise InvalidRequest("No such document.")
                notice = "Removed."
            elif action == "reindex":
                notice = f"Indexed: {await knowledge.reindex(site)} passages."
            else:
                raise InvalidRequest("Unknown action.")
        except ParleyError as exc:
            self.set_status(exc.status)
            await self.show(site, error=exc.message)
            return
        # Signed: the page shows only notices this server wrote, never text put in a link.
        signed = self.create_signed_value(NOTICE, notice[:200]).decode()
        self.redirect(f"/dashboard/sites/{site.site_key}/knowledge?{urlencode({'notice': signed})}")

    def _notice(self, signed: str) -> str | None:
        if not signed:
            return None
        text = tornado.web.decode_signed_value(self.settings["cookie_secret"], NOTICE, signed,
                                               max_age_days=NOTICE_MAX_AGE_DAYS)
        return text.decode() if text else None


class KnowledgeJobsHandler(OperatorApiHandler):
    """The site's fetches as JSON, polled by the knowledge page while one runs (admins). Any process
    answers: fetches are kept in the store by the process that runs them."""

    admin_only = True

    async def get(self, site_key: str) -> None:
        site = await self.services.sites.get_for_admin(site_key)
        jobs = await self.services.site_knowledge.fetch_jobs(site)
        self.write_json({"success": True, "fetching": still_fetching(jobs),
                         "jobs": jobs})
