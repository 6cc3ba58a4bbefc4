"""`python -m server`: serve (the default), and manage sites, knowledge, operators and blocks."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from server.app import Services, build_services
from server.ai.check import check_model, describe_model
from server.ai.settings import (ai_settings, global_model_config, masked, model_limits, site_model_config,
                                updated_ai_settings)
from server.audit import CLI
from server.config import Config, add_config_arguments, browser_host, load_config
from server.backends import store_name
from server.data_dir import HOW_TO_POINT, DataDirProblem, check_data_dir
from server.errors import ParleyError, Unavailable, UnknownSite
from server.knowledge import DEFAULT_SITEMAP_LIMIT, IngestError, KnowledgeService
from server.opening_hours import AVAILABLE_WHEN, AVAILABLE_WHEN_LABELS, WEEKDAY_NAMES, WEEKDAYS, form_values
from server.opening_hours import FORM_FIELDS as HOURS_FORM_FIELDS
from server.opening_hours import site_hours as site_hours_of
from server.privacy import VisitorNotFound, retention_days
from server.proactive import site_rules
from server.sites import embed_snippet, keeps_full_page_urls
from server.store.models import Site
from server.validation import SESSION_ID_RE

Command = Callable[[Services, argparse.Namespace], Awaitable[int]]


def _session(value: str) -> str:
    if not SESSION_ID_RE.match(value):
        raise argparse.ArgumentTypeError("a session id looks like sess_ followed by 16 to 64 of A-Z a-z 0-9 _ -")
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


# -- sites ----------------------------------------------------------------------------------------
def _site_json(site: Any) -> dict[str, Any]:
    return {"id": site.id, "site_key": site.site_key, "name": site.name,
            "allowed_origins": site.allowed_origins, "created_at": site.created_at}


async def site_create(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.create(args.name, args.origin)
    if args.json:
        _print_json(_site_json(site))
    else:
        print(f"Created site {site.name!r}\nsite_key: {site.site_key}")
        config = services.config
        print(f"Embed: {embed_snippet(site, _base_url(config))}")
        if not config.public_url:
            print(f"(that assumes Parley on this machine at port {config.port}: give --port, or "
                  "--public-url / PARLEY_PUBLIC_URL with the URL browsers reach it at)")
    return 0


async def site_list(services: Services, args: argparse.Namespace) -> int:
    sites = await services.sites.list()
    if args.json:
        _print_json([_site_json(s) for s in sites])
    else:
        for site in sites:
            origins = ", ".join(site.allowed_origins) or "any origin"
            print(f"{site.site_key}  {site.name}  ({origins})")
        if not sites:
            print("No sites yet. Create one with: python -m server site create --name NAME")
    return 0


async def site_settings(services: Services, args: argparse.Namespace) -> int:
    site = await services.site_admin.set_privacy(await services.sites.get(args.site), CLI,
                                                 full_page_urls=args.full_page_urls,
                                                 retention_days=args.retention_days)
    full = keeps_full_page_urls(site)
    print(f"full_page_urls: {json.dumps(full)}  (" + (
        "page URLs are kept whole, query and fragment included)" if full else
        "only the origin and path of page URLs are kept)"))
    days = retention_days(site)
    print(f"retention_days: {json.dumps(days)}  (" + (
        f"conversations with no activity for {days} days are erased, their images too)" if days else
        "conversations are kept until erased)"))
    return 0


async def site_hours(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    current = form_values(site_hours_of(site))
    changes = {name: getattr(args, name) for name in HOURS_FORM_FIELDS if name != "closed_dates"
               and getattr(args, name, None) is not None}
    if args.closed is not None:
        changes["closed_dates"] = "\n".join(args.closed)
    if changes:
        site = await services.hours.save(site, {**current, **changes}, CLI)
    hours = site_hours_of(site)
    availability = await services.hours.availability(site)
    if args.json:
        _print_json({**hours.to_setting(), **availability.public()})
        return 0
    print(f"available when: {hours.available_when} ({AVAILABLE_WHEN_LABELS[hours.available_when]})")
    print(f"time zone:      {hours.time_zone}")
    uses_hours = hours.available_when in ("hours", "both")
    if not uses_hours:
        print("weekly hours:   not in use (they count with --available-when hours or both)")
    for name, ranges in zip(WEEKDAY_NAMES, hours.weekly):
        print(f"{name + ':':<15} {', '.join(str(r) for r in ranges) or ('closed' if uses_hours else '-')}")
    print(f"closed dates:   {', '.join(hours.closed_dates) or 'none'}")
    print(f"away message:   {hours.away_message or '(the widget default)'}")
    print(availability.describe())
    return 0


# -- knowledge ------------------------------------------------------------------------------------
def _knowledge(services: Services, allow_private: bool = False) -> KnowledgeService:
    return KnowledgeService(services.store, services.knowledge,
                            allow_private=allow_private or services.config.kb_allow_private)


async def kb_add(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    knowledge = _knowledge(services, args.allow_private)
    failed = 0
    for source in args.sources:
        try:
            if source.startswith(("http://", "https://")):
                documents = await knowledge.add_url(site, source, sitemap_limit=args.sitemap_limit,
                                                    title=args.title)
            elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", source):
                raise IngestError("only http(s) addresses and files on this machine can be added")
            else:
                documents = [await knowledge.add_file(site, Path(source), url=args.url, title=args.title)]
        except (IngestError, OSError) as exc:
            print(f"skipped {source}: {getattr(exc, 'message', exc)}", file=sys.stderr)
            failed += 1
            continue
        for document in documents:
            print(f"added document {document.id}: {document.title} ({len(document.content)} characters)")
        if not documents:
            print(f"nothing added from {source}", file=sys.stderr)
    return 1 if failed else 0


async def kb_list(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    documents = await _knowledge(services).list(site)
    if args.json:
        _print_json([{"id": d.id, "title": d.title, "url": d.url, "file_name": d.file_name,
                      "characters": len(d.content), "updated_at": d.updated_at} for d in documents])
    else:
        for document in documents:
            where = (f"  <{document.url}>" if document.url else
                     f"  (file {document.file_name})" if document.file_name else "")
            print(f"{document.id:>5}  {document.title}  ({len(document.content)} characters){where}")
    return 0


async def kb_gaps(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    # The dashboard's list: grouped, handoffs included, and what the pages answer now left out.
    gaps = await services.site_knowledge.gaps(site, shown=args.limit)
    if args.json:
        _print_json([dataclasses.asdict(g) for g in gaps])
    else:
        for gap in gaps:
            relevance = "no AI answer" if gap.relevance is None else f"relevance {gap.relevance:.2f}"
            handoffs = f", {gap.handoffs} handed to a person" if gap.handoffs else ""
            print(f"{gap.last_asked}  asked {gap.count}×{handoffs}  {relevance}  {gap.question}")
        if not gaps:
            print("no unanswered questions: every AI answer found its passages")
    return 0


async def kb_remove(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    if not await _knowledge(services).remove(site, args.id):
        print(f"no document {args.id} on this site", file=sys.stderr)
        return 1
    print(f"removed document {args.id}")
    return 0


async def kb_reindex(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    documents, passages, seconds = await _knowledge(services).reindex(site)
    print(f"indexed {documents} documents as {passages} passages in {seconds * 1000:.0f} ms "
          "(running servers rebuild their index by themselves when documents change)")
    return 0


# -- a site's AI ----------------------------------------------------------------------------------
AI_CONFIG_FLAGS = ("base_url", "api_key", "model", "temperature", "max_tokens", "system_prompt",
                   "redact_pii", "handoff_when_unsure", "handoff_phrases")
CAP_FLAGS = ("replies_per_session_hour", "replies_per_site_day", "max_input_chars")


async def site_ai_config(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    current = ai_settings(site)
    changes = {name: getattr(args, name) for name in AI_CONFIG_FLAGS if getattr(args, name) is not None}
    caps = {name: (None if value < 0 else value) for name in CAP_FLAGS
            if (value := getattr(args, name)) is not None}
    if caps:
        changes["caps"] = caps
    if args.clear or changes:
        updated = updated_ai_settings({} if args.clear else current, changes)
        site = await services.sites.update_settings(site.id, {"ai": updated})
        current = updated
        print(f"updated the AI settings of {site.name!r}")
    if args.show or not (args.clear or changes):
        shown = masked(current)  # the key is never printed in full
        if args.json:
            _print_json(shown)
        else:
            for name, value in shown.items():
                print(f"{name}: {json.dumps(value, ensure_ascii=False)}")
            if not shown:
                print("no AI settings of its own: this site uses the global ones (PARLEY_AI_*)")
    return 0


# -- operator accounts ----------------------------------------------------------------------------
def _read_password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        import getpass

        password = getpass.getpass(prompt)
        if password != getpass.getpass("Again: "):
            raise ParleyError("The passwords differ.")
    else:
        raise ParleyError("Give the password on standard input with --password-stdin.")
    if not password:
        raise ParleyError("The password is empty.")
    return password


def _operator_json(operator: Any, sites: dict[int, str]) -> dict[str, Any]:
    return {"id": operator.id, "email": operator.email, "name": operator.name, "role": operator.role,
            "disabled": operator.disabled, "sites": [sites.get(i, str(i)) for i in operator.site_ids],
            "two_factor": operator.totp_secret is not None, "created_at": operator.created_at}


async def operator_add(services: Services, args: argparse.Namespace) -> int:
    site_ids = [(await services.sites.get(key)).id for key in args.site]
    if args.role == "agent" and not site_ids:
        print("note: this agent sees no site until one is given with --site", file=sys.stderr)
    operator = await services.accounts.create(args.email, args.name, args.role, _read_password(args),
                                              site_ids)
    await services.audit.record(CLI, "operator_add", target=operator.email, role=operator.role)
    print(f"created {operator.role} {operator.email} (id {operator.id})")
    return 0


async def operator_list(services: Services, args: argparse.Namespace) -> int:
    sites = {site.id: site.site_key for site in await services.sites.list()}
    operators = [_operator_json(o, sites) for o in await services.store.list_operators()]
    if args.json:
        _print_json(operators)
        return 0
    for o in operators:
        state = "disabled" if o["disabled"] else "active"
        where = "all sites" if o["role"] == "admin" else (", ".join(o["sites"]) or "no site")
        print(f"{o['id']:>4}  {o['email']}  {o['name']}  {o['role']}  {state}  ({where})")
    if not operators:
        print("No operators yet. Add one with: operator add --email E --name N --role admin --password-stdin")
    return 0


async def operator_passwd(services: Services, args: argparse.Namespace) -> int:
    operator = await services.accounts.get_by_email(args.email)
    await services.accounts.set_password(operator, _read_password(args, "New password: "))
    await services.audit.record(CLI, "password_change", target=operator.email)
    print(f"changed the password of {operator.email}; their open sessions have ended")
    return 0


def _set_disabled(disabled: bool) -> Command:
    async def run(services: Services, args: argparse.Namespace) -> int:
        operator = await services.accounts.get_by_email(args.email)
        # As in the dashboard: never the last admin; their conversations go back to the team.
        await services.operator_admin.set_disabled(operator, disabled, CLI)
        print(f"{operator.email} is now {'disabled; their open sessions have ended' if disabled else 'enabled'}")
        return 0

    return run


async def operator_sites(services: Services, args: argparse.Namespace) -> int:
    operator = await services.accounts.get_by_email(args.email)
    site_ids = [(await services.sites.get(key)).id for key in args.site]
    await services.operator_admin.set_sites(operator, site_ids, CLI)
    print(f"{operator.email} now sees {len(site_ids)} site(s)"
          + (" (admins see every site anyway)" if operator.is_admin else ""))
    return 0


# -- canned replies -------------------------------------------------------------------------------
SHORTCUT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


async def canned_add(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    text = " ".join(args.text).strip()
    if not SHORTCUT_RE.match(args.shortcut):
        raise ParleyError("A shortcut is 1 to 40 of a-z 0-9 _ - (typed after '/' in the reply box).")
    if not text or len(text) > 4000:
        raise ParleyError("A canned reply is 1 to 4000 characters.")
    reply = await services.store.save_canned_reply(site.id, args.shortcut, text)
    print(f"saved /{reply.shortcut} (id {reply.id})")
    return 0


async def canned_list(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    replies = await services.store.list_canned_replies(site.id)
    if args.json:
        _print_json([{"id": r.id, "shortcut": r.shortcut, "text": r.content} for r in replies])
        return 0
    for reply in replies:
        print(f"{reply.id:>4}  /{reply.shortcut}  {reply.content}")
    return 0


async def canned_remove(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    if not await services.store.remove_canned_reply(site.id, args.id):
        print(f"no canned reply {args.id} on this site", file=sys.stderr)
        return 1
    print(f"removed canned reply {args.id}")
    return 0


# -- privacy --------------------------------------------------------------------------------------
def _base_url(config: Config) -> str:
    return (config.public_url or f"http://{browser_host(config.host)}:{config.port}").rstrip("/")


async def visitor_export(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    _print_json(await services.privacy.export(site, args.session, base_url=_base_url(services.config),
                                              actor=CLI))
    return 0


async def visitor_erase(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    try:
        done = await services.privacy.erase(site, args.session, actor=CLI, without_conversation=args.force)
    except VisitorNotFound as exc:
        raise ParleyError("This site has no conversation with that session id "
                          "(--force erases its other traces anyway).") from exc
    print(f"erased the conversation, its messages and {done['uploads']} upload(s)")
    return 0


# -- operators ------------------------------------------------------------------------------------
async def _visitor_site(services: Services, args: argparse.Namespace) -> Site:
    """The site, once it has seen this session: a mistyped id must not start a conversation
    nobody is in (it would wait in the inbox for ever)."""
    site = await services.sites.get(args.site)
    if not await services.operators.knows(site, args.session):
        raise ParleyError("This site has no visitor with that session id. The widget keeps it in the "
                          f"browser's localStorage, under the key parley:{site.site_key}.")
    return site


async def operator_say(services: Services, args: argparse.Namespace) -> int:
    site = await _visitor_site(services, args)
    message = await services.operators.say(site, args.session, " ".join(args.text),
                                           operator_name=args.name)
    print(f"sent message {message.id}")
    return 0


def _set_mode(mode: str) -> Command:
    async def run(services: Services, args: argparse.Namespace) -> int:
        site = await _visitor_site(services, args)
        await services.operators.set_mode(site, args.session, mode)
        print(f"conversation is now in {mode} mode")
        return 0

    return run


async def proactive_send(services: Services, args: argparse.Namespace) -> int:
    site = await _visitor_site(services, args)
    message = await services.operators.send_proactive(site, args.session, " ".join(args.text))
    print(f"queued proactive message {message.id}")
    return 0


async def rule_add(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    rule = await services.rules.add(site, args.path, args.after, " ".join(args.text))
    print(f"added rule {rule.id}: on {rule.path} after {rule.delay_seconds:g} s")
    return 0


async def rule_list(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    rules = site_rules(site)
    if args.json:
        _print_json([dataclasses.asdict(r) for r in rules])
        return 0
    for rule in rules:
        print(f"{rule.id}  {rule.path}  after {rule.delay_seconds:g} s  {rule.text}")
    return 0


async def rule_remove(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    if not await services.rules.remove(site, args.id):
        print(f"no rule {args.id} on this site", file=sys.stderr)
        return 1
    print(f"removed rule {args.id}")
    return 0


def _block_target(args: argparse.Namespace) -> tuple[str, str]:
    for kind in ("session", "ip", "email"):
        value = getattr(args, kind)
        if value:
            return kind, value
    raise ParleyError("Say what to block: --session, --ip or --email.")


async def block(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    kind, value = _block_target(args)
    await services.operators.block(site, kind, value, minutes=args.minutes, reason=args.reason,
                                   session_id=args.session)
    print(f"blocked {kind} {value}" + (f" for {args.minutes:g} minutes" if args.minutes else ""))
    return 0


async def unblock(services: Services, args: argparse.Namespace) -> int:
    site = await services.sites.get(args.site)
    kind, value = _block_target(args)
    removed = await services.operators.unblock(site, kind, value, session_id=args.session)
    print(f"removed {removed} block(s)")
    return 0


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Parley: a self-hosted AI live chat for websites. With no command, serves.",
    )
    add_config_arguments(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(parent: Any, name: str, help_text: str, run: Command | None = None) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, help=help_text, description=help_text)
        add_config_arguments(sub, ("data_dir", "store", "blobs", "log_level"))
        if run is not None:
            sub.set_defaults(run=run, command_parser=sub)
        return sub

    ai = commands.add_parser("ai", help="check the AI model").add_subparsers(
        dest="ai_command", metavar="ACTION", required=True)
    checking = ai.add_parser("check", help="ask the configured model once (models list or one token) "
                             "and say whether key, model and URL work; exit 1 if not",
                             description="Ask the configured model once: exit 0 when it answers, 1 "
                             "when the key, model or URL is wrong.")
    add_config_arguments(checking, ("data_dir", "store", "log_level", "ai_base_url", "ai_api_key",
                                    "ai_model"))
    checking.add_argument("--site", metavar="SITE_KEY",
                          help="check the model this site answers with (its own, else the global one)")
    checking.set_defaults(ai_check=True, command_parser=checking)

    serve = commands.add_parser("serve", help="serve the widget API, widget and demo page (the default)")
    add_config_arguments(serve)

    site = commands.add_parser("site", help="create and list sites; their settings, hours and AI").add_subparsers(
        dest="site_command", metavar="ACTION", required=True)
    create = command(site, "create", "create a site and print its site_key", site_create)
    create.set_defaults(creates_data=True)  # the first command on a fresh install
    add_config_arguments(create, ("public_url", "port"))  # for the embed line it prints
    create.add_argument("--name", required=True, help="a name for operators, e.g. the shop's name")
    create.add_argument("--origin", action="append", default=[], metavar="URL",
                        help="an origin allowed to embed the widget (repeat; none means any)")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    listing = command(site, "list", "list sites", site_list)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    settings = command(site, "settings", "show or change a site's privacy settings", site_settings)
    settings.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    settings.add_argument("--full-page-urls", action=argparse.BooleanOptionalAction, default=None,
                          help="keep the whole URL of the page a visitor chats from, query and "
                               "fragment included (default: origin and path only; queries can "
                               "carry tokens and emails)")
    settings.add_argument("--retention-days", type=int, metavar="DAYS",
                          help="erase conversations (messages, contact, images) with no activity for "
                               "this many days; 0 keeps them (the default)")
    hours = command(site, "hours", "show or change a site's opening hours: weekly hours in its time zone, "
                    "closed dates, and when a person can answer (outside that, the widget says the team "
                    "is away, the AI keeps answering and a request for a person asks for an email)",
                    site_hours)
    hours.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    hours.add_argument("--available-when", choices=AVAILABLE_WHEN,
                       help="when a person can answer: always (no hours, the default), hours (within "
                            "the weekly hours), operators (while an operator has the dashboard open), "
                            "both")
    hours.add_argument("--time-zone", metavar="ZONE", help="IANA time zone of the hours, e.g. Europe/Paris")
    for day, name in zip(WEEKDAYS, WEEKDAY_NAMES):
        hours.add_argument(f"--{day}", metavar="RANGES",
                           help=f"{name}'s hours, e.g. '09:00-12:00, 13:00-17:30' ('' closed)")
    hours.add_argument("--closed", action="append", metavar="DATE",
                       help="a closed date (2026-12-25) or span (2026-12-24..2026-12-26); repeat; "
                            "replaces the list (--closed '' empties it)")
    hours.add_argument("--away-message", metavar="TEXT",
                       help="the widget's words while away ('' for its default: \"We're away right "
                            "now - back Monday 9:00. Our assistant can still help.\")")
    hours.add_argument("--json", action="store_true", help="print one JSON object (hours and status)")
    ai_config = command(site, "ai-config", "show or change a site's own AI model, prompt, caps and "
                        "handoff rules (unset values fall back to the global PARLEY_AI_* settings)",
                        site_ai_config)
    ai_config.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    ai_config.add_argument("--base-url", metavar="URL",
                           help="OpenAI-compatible API base URL, e.g. https://api.openai.com/v1 ('' unsets)")
    ai_config.add_argument("--api-key", metavar="KEY",
                           help="API key for that URL ('' unsets); stored, never printed in full")
    ai_config.add_argument("--model", help="model name, e.g. gpt-4o-mini ('' unsets)")
    ai_config.add_argument("--temperature", type=float, help="sampling temperature, 0 to 2")
    ai_config.add_argument("--max-tokens", type=int, metavar="N", help="most tokens in one answer")
    ai_config.add_argument("--system-prompt", metavar="TEXT",
                           help="instructions for the model; {site_name} is replaced ('' unsets)")
    ai_config.add_argument("--redact-pii", action=argparse.BooleanOptionalAction, default=None,
                           help="hide emails, phone and card numbers from the model (the stored chat keeps them)")
    ai_config.add_argument("--handoff-when-unsure", action=argparse.BooleanOptionalAction, default=None,
                           help="hand the conversation to operators when no knowledge matches")
    ai_config.add_argument("--handoff-phrase", dest="handoff_phrases", action="append", metavar="TEXT",
                           help="an extra phrase meaning 'let me talk to a person' (repeat; replaces the list)")
    ai_config.add_argument("--replies-per-session-hour", type=int, metavar="N",
                           help="most AI answers per visitor per hour (default 30; -1: no limit)")
    ai_config.add_argument("--replies-per-site-day", type=int, metavar="N",
                           help="most AI answers per site per 24 hours (default no limit; -1: no limit)")
    ai_config.add_argument("--max-input-chars", type=int, metavar="N",
                           help="longest visitor message the AI takes (default 4000)")
    ai_config.add_argument("--clear", action="store_true", help="drop every site AI setting first")
    ai_config.add_argument("--show", action="store_true", help="print the settings (the key masked)")
    ai_config.add_argument("--json", action="store_true", help="with --show, print one JSON object")

    kb = commands.add_parser("kb", help="manage a site's knowledge documents").add_subparsers(
        dest="kb_command", metavar="ACTION", required=True)
    add = command(kb, "add", "add files (.txt, .md, .html, .pdf) or URLs (a page, or a sitemap) to "
                  "a site's knowledge; adding a URL again refreshes it", kb_add)
    add.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    add.add_argument("--url", help="for files: the public page they come from, shown as the source")
    add.add_argument("--title", help="the document title (default: from the document)")
    add.add_argument("--sitemap-limit", type=int, default=DEFAULT_SITEMAP_LIMIT, metavar="N",
                     help=f"most pages to fetch from a sitemap (default {DEFAULT_SITEMAP_LIMIT})")
    add.add_argument("--allow-private", action="store_true",
                     help="allow URLs on loopback or private addresses (an intranet wiki) "
                          "[env PARLEY_KB_ALLOW_PRIVATE]")
    add.add_argument("sources", nargs="+", metavar="FILE_OR_URL", help="a file path or an http(s) URL")
    kb_listing = command(kb, "list", "list a site's knowledge documents", kb_list)
    kb_listing.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    kb_listing.add_argument("--json", action="store_true", help="print a JSON array")
    gaps = command(kb, "gaps", "visitor questions the knowledge did not cover (the AI said it did "
                   "not know) and the last ones before a handoff, grouped and most frequent first "
                   "as on the dashboard: what to write next", kb_gaps)
    gaps.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    gaps.add_argument("--limit", type=int, default=50, metavar="N", help="at most N of them (default 50)")
    gaps.add_argument("--json", action="store_true", help="print a JSON array")
    remove = command(kb, "remove", "remove one knowledge document", kb_remove)
    remove.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    remove.add_argument("id", type=int, help="the document id from 'kb list'")
    reindex = command(kb, "reindex", "build a site's search index now and report its size", kb_reindex)
    reindex.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")

    def conversation_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
        sub.add_argument("--session", required=True, type=_session, metavar="SESSION_ID",
                         help="the visitor's session_id (sess_...), shown in the widget's storage")

    operator = commands.add_parser(
        "operator", help="dashboard accounts, and acting as an operator on a conversation"
    ).add_subparsers(dest="operator_command", metavar="ACTION", required=True)
    op_add = command(operator, "add", "create a dashboard account", operator_add)
    op_add.add_argument("--email", required=True, help="what they sign in with")
    op_add.add_argument("--name", required=True, help="the name visitors and colleagues see")
    op_add.add_argument("--role", required=True, choices=("admin", "agent"),
                        help="admin: every site and the audit log; agent: only the sites given")
    op_add.add_argument("--site", action="append", default=[], metavar="SITE_KEY",
                        help="a site an agent works on (repeat)")
    op_add.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    op_listing = command(operator, "list", "list dashboard accounts", operator_list)
    op_listing.add_argument("--json", action="store_true", help="print a JSON array")
    op_passwd = command(operator, "passwd", "set an operator's password (ends their sessions)",
                        operator_passwd)
    op_passwd.add_argument("--email", required=True, help="the operator's email")
    op_passwd.add_argument("--password-stdin", action="store_true",
                           help="read the password from the first line of standard input")
    for verb, disabled, help_text in (
            ("disable", True, "stop an operator signing in (ends their open sessions at once)"),
            ("enable", False, "let a disabled operator sign in again")):
        command(operator, verb, help_text, _set_disabled(disabled)).add_argument(
            "--email", required=True, help="the operator's email")
    op_sites = command(operator, "sites", "set the sites an agent works on", operator_sites)
    op_sites.add_argument("--email", required=True, help="the operator's email")
    op_sites.add_argument("--site", action="append", default=[], metavar="SITE_KEY",
                          help="a site (repeat; none removes them all)")
    say = command(operator, "say", "send an operator message to a visitor", operator_say)
    conversation_args(say)
    say.add_argument("--name", default="Operator", help="the name the visitor sees (default Operator)")
    say.add_argument("text", nargs="+")
    for mode, verb, help_text in (("operator", "takeover", "take the conversation over from the AI"),
                                  ("ai", "release", "hand the conversation back to the AI")):
        conversation_args(command(operator, verb, help_text, _set_mode(mode)))

    canned = commands.add_parser(
        "canned", help="a site's canned replies, inserted by typing / in the dashboard's reply box"
    ).add_subparsers(dest="canned_command", metavar="ACTION", required=True)
    canned_adding = command(canned, "add", "add or change a canned reply", canned_add)
    canned_adding.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    canned_adding.add_argument("--shortcut", required=True, help="what operators type after '/', e.g. refund")
    canned_adding.add_argument("text", nargs="+", help="the reply")
    canned_listing = command(canned, "list", "list a site's canned replies", canned_list)
    canned_listing.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    canned_listing.add_argument("--json", action="store_true", help="print a JSON array")
    canned_removing = command(canned, "remove", "remove a canned reply", canned_remove)
    canned_removing.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    canned_removing.add_argument("id", type=int, help="the id from 'canned list'")

    proactive = commands.add_parser("proactive", help="nudge a visitor").add_subparsers(
        dest="proactive_command", metavar="ACTION", required=True)
    send = command(proactive, "send", "queue a proactive message for a visitor", proactive_send)
    conversation_args(send)
    send.add_argument("text", nargs="+", help="the message")
    rule = proactive.add_parser("rule", help="messages shown on matching pages after a delay")
    rules = rule.add_subparsers(dest="rule_command", metavar="ACTION", required=True)
    rule_adding = command(rules, "add", "show TEXT to visitors of PATH after a delay", rule_add)
    rule_adding.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    rule_adding.add_argument("--path", required=True,
                             help="page path it applies to, with everything below it (e.g. /pricing)")
    rule_adding.add_argument("--after", type=float, default=0, metavar="SECONDS",
                             help="seconds on the page before it shows (default 0)")
    rule_adding.add_argument("text", nargs="+", help="the message")
    rule_listing = command(rules, "list", "list the site's rules", rule_list)
    rule_listing.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    rule_listing.add_argument("--json", action="store_true", help="print a JSON array")
    rule_removing = command(rules, "remove", "remove a rule", rule_remove)
    rule_removing.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
    rule_removing.add_argument("id", help="the rule id from 'proactive rule list'")

    visitor = commands.add_parser(
        "visitor", help="one visitor's data: export it as JSON, or erase it"
    ).add_subparsers(dest="visitor_command", metavar="ACTION", required=True)
    conversation_args(command(visitor, "export", "print everything stored about one visitor session "
                              "as JSON (messages, contact, rating, uploads with their URLs)", visitor_export))
    erasing = command(visitor, "erase", "erase one visitor session: its conversation, messages, "
                      "uploaded files, contact, rating and the events naming it", visitor_erase)
    conversation_args(erasing)
    erasing.add_argument("--force", action="store_true",
                         help="erase the session's other traces even when it has no conversation")

    for name, run, help_text in (("block", block, "block a visitor by session, IP or email"),
                                 ("unblock", unblock, "lift blocks on a session, IP or email")):
        sub = command(commands, name, help_text, run)
        sub.add_argument("--site", required=True, metavar="SITE_KEY", help="the site's site_key (sk_...)")
        target = sub.add_mutually_exclusive_group(required=True)
        target.add_argument("--session", type=_session, metavar="SESSION_ID", help="one visitor session")
        target.add_argument("--ip", metavar="ADDRESS", help="every session from this IP address")
        target.add_argument("--email", metavar="EMAIL", help="whoever left this email address")
        if name == "block":
            sub.add_argument("--minutes", type=float, help="lift the block after this long (default never)")
            sub.add_argument("--reason", help="a note for other operators")
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # bm25s sets its own logger to DEBUG; its index-building chatter is not ours to print.
    logging.getLogger("bm25s").setLevel(max(logging.WARNING, logging.getLogger().level))
    # httpx logs every request at INFO; our own lines say what matters about the model's calls.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    # aiobotocore says where it found S3 credentials at INFO, on every command run with S3.
    logging.getLogger("aiobotocore.credentials").setLevel(max(logging.WARNING, logging.getLogger().level))


async def ai_check(config: Config, site_key: str | None) -> int:
    """`ai check`: the global model (no database needed), or the model a site answers with."""
    model, whose = global_model_config(config), "global"
    if site_key:
        if config.store == "sqlite":
            check_data_dir(config.data_dir, create=False)
        services = await build_services(config)
        try:
            site = await services.sites.get(site_key)
        finally:
            await services.close()
        model, whose = site_model_config(site, model, model_limits(config)), f"site {site.name!r}"
    print(f"AI ({whose}): {describe_model(model)}")
    if model is None:
        print("ok: the offline answerer needs no network or key")
        return 0
    result = await check_model(model)
    print(("ok: " if result.ok else "FAILED: ") + result.message)
    return 0 if result.ok else 1


async def _run_command(config: Config, run: Command, args: argparse.Namespace) -> int:
    services = await build_services(config)
    try:
        return await run(services, args)
    finally:
        await services.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the subcommand, so its usage is the one shown
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    config = load_config(vars(args))
    setup_logging(config.log_level)
    if getattr(args, "ai_check", False):
        try:
            return asyncio.run(ai_check(config, args.site))
        except (ParleyError, DataDirProblem) as exc:
            print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 2
    serving = getattr(args, "run", None) is None
    try:
        if config.store == "sqlite" or (serving and config.blobs == "local"):
            # A command on MongoDB finds its database there, not in the data directory.
            check_data_dir(config.data_dir, create=serving or getattr(args, "creates_data", False))
    except DataDirProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if serving:
        from server.serve import serve

        try:
            asyncio.run(serve(config))
        except Unavailable as exc:  # the database or the bucket cannot be reached at start
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        return 0
    try:
        return asyncio.run(_run_command(config, args.run, args))
    except UnknownSite as exc:
        where, how = ((config.database_path.absolute(), HOW_TO_POINT) if config.store == "sqlite" else
                      (store_name(config), "point --store (or PARLEY_STORE) at the server's database"))
        print(f"error: {exc.message} (looked in {where}; if that is not the server's database, {how})",
              file=sys.stderr)
        return 2
    except ParleyError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
