"""A site's knowledge from the dashboard: documents with their passages, files uploaded, URL and
sitemap fetches in the background with their progress and errors, Try the assistant (the site's
own model answers; the passages it was given and their scores are shown; no conversation is made),
and the knowledge gaps (questions the pages did not cover or that ended in a handoff) grouped when
they say the same thing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import PurePath

from server.ai.base import Passage
from server.ai.engine import AIEngine
from server.ai.knowledge import RELEVANCE_FLOOR, KnowledgeBase
from server.ai.passages import split_sections
from server.ai.phrases import only_asks_for_human, small_talk
from server.ai.settings import ai_setting
from server.audit import Actor, AuditLog
from server.errors import ParleyError
from server.knowledge import KnowledgeService, check_http_url
from server.store.base import Store, StoreUnavailable
from server.sites import DEFAULT_SETTINGS
from server.store.models import FetchJob, KnowledgeDocument, KnowledgeGap, Site

log = logging.getLogger(__name__)

MAX_JOBS_SHOWN = 20  # and kept: a site's older fetches are pruned from the store
MAX_ERRORS_SHOWN = 20
MAX_ERROR_CHARS = 500
JOB_WRITE_SECONDS = 0.5  # a running fetch writes its progress at most this often
JOB_HEARTBEAT_SECONDS = 5.0  # and at least this often, progress or not
JOB_STALE_SECONDS = 30.0  # a fetch not written for this long is shown interrupted
CLOSE_SECONDS = 5.0
INTERRUPTED = "The server running this fetch stopped before it ended; add the URL again."
MAX_SITES_COUNTED = 256
TRY_SECONDS = 60  # Try the assistant waits this long for the whole answer
TRY_MAX_CHARS = 20_000
GAPS_READ = 500
GAPS_SHOWN = 50  # each one asked of the knowledge again, to leave out those answered since
HANDOFFS_READ = 200
WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Words that do not change what a question asks about.
FILLER = frozenset("a an the is are do does did can could i you we my your our me to of for in on at "
                   "it this that and or with what how please hi hello there any".split())


class RunningFetch:
    """A fetch this process runs. Its progress is kept in memory and written to the store (where any
    process reads it) at most every JOB_WRITE_SECONDS, and at least every JOB_HEARTBEAT_SECONDS so
    that a reader can tell a fetch whose process died (no write for JOB_STALE_SECONDS)."""

    def __init__(self, store: Store, job: FetchJob) -> None:
        self.store = store
        self.job = job
        self.done = self.total = 0
        self.errors: list[str] = []
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return self.job.url

    def progress(self, done: int, total: int, error: str | None) -> None:
        self.done, self.total = done, total
        if error and len(self.errors) < MAX_ERRORS_SHOWN:
            self.errors.append(error[:MAX_ERROR_CHARS])
        self._changed.set()

    async def keep_writing(self) -> None:
        """Until cancelled: the progress when it changes (throttled), else the heartbeat."""
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for swallows the cancel that ends this
            # loop when the progress changes at that moment
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(JOB_HEARTBEAT_SECONDS):
                    await self._changed.wait()
            self._changed.clear()
            try:
                await self.write({})
            except StoreUnavailable as exc:  # the fetch goes on; the next write may get through
                log.warning("could not record the progress of fetching %s: %s", self.url, exc)
            await asyncio.sleep(JOB_WRITE_SECONDS)

    async def write(self, outcome: dict[str, object]) -> None:
        await self.store.update_fetch_job(
            self.job.site_id, self.job.id,
            {"done": self.done, "total": self.total, "errors": self.errors, **outcome}, now=time.time())


def job_view(job: FetchJob, now: float, stale_after: float = JOB_STALE_SECONDS) -> dict[str, object]:
    """A job as the dashboard shows it: one still "fetching" whose process has not written for
    `stale_after` seconds is shown "interrupted" (that process stopped or died)."""
    state, message = job.state, job.message
    if state == "fetching" and now - job.updated_at > stale_after:
        state, message = "interrupted", INTERRUPTED
    return {"id": job.id, "url": job.url, "state": state, "added": job.added, "message": message,
            "done": job.done, "total": job.total, "errors": list(job.errors),
            "started_at": job.started_at, "updated_at": job.updated_at}


def still_fetching(jobs: list[dict[str, object]]) -> bool:
    return any(job["state"] == "fetching" for job in jobs)


@dataclass(frozen=True)
class Tried:
    """What Try the assistant shows: the answer and the passages the model was given."""

    question: str
    relevance: float  # the best relevance found, even under the floor
    passages: list[Passage]  # given to the model, best first, with their scores
    answer: str
    handoff: bool
    error: str | None = None


@dataclass
class GapGroup:
    question: str  # the newest wording
    count: int
    relevance: float | None  # the best relevance any of them had (None: no AI answer to any)
    last_asked: str
    handoffs: int = 0  # how many of them ended in a handoff


def gap_key(question: str) -> frozenset[str]:
    words = {w for w in WORD.findall(question.lower()) if w not in FILLER}
    return frozenset(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words)


def without_small_talk(gaps: list[KnowledgeGap]) -> list[KnowledgeGap]:
    """The questions among them: "hi" or "thanks!" is no gap in the knowledge."""
    return [gap for gap in gaps if small_talk(gap.question) is None]


def group_gaps(gaps: list[KnowledgeGap]) -> list[GapGroup]:
    """Questions, newest first -> groups of questions with the same words (ignoring case,
    punctuation, filler words and a plural s), most frequent first. A question listed twice (under
    the floor and ending in a handoff) counts once."""
    groups: dict[frozenset[str], GapGroup] = {}
    seen: dict[tuple[str, str, str], KnowledgeGap] = {}
    for gap in gaps:
        asked = (gap.session_id, gap.asked_at, gap.question)
        if asked in seen:
            if gap.handoff and not seen[asked].handoff:
                groups[gap_key_of(gap.question)].handoffs += 1
                seen[asked] = gap
            continue
        seen[asked] = gap
        key = gap_key_of(gap.question)
        group = groups.get(key)
        if group is None:
            groups[key] = group = GapGroup(gap.question.strip(), 0, None, gap.asked_at)
        group.count += 1
        group.handoffs += gap.handoff
        if gap.relevance is not None:
            group.relevance = max(group.relevance or 0.0, gap.relevance)
    return sorted(groups.values(), key=lambda g: -g.count)  # stable: the newest first among equals


def gap_key_of(question: str) -> frozenset[str]:
    return gap_key(question) or frozenset({question.strip().lower()})


class SiteKnowledge:
    def __init__(self, store: Store, knowledge: KnowledgeBase, audit: AuditLog, ai: AIEngine, *,
                 allow_private: bool = False, origin: str = "", stale_after: float = JOB_STALE_SECONDS) -> None:
        self.store = store
        self.knowledge = knowledge
        self.audit = audit
        self.ai = ai
        self.ingest = KnowledgeService(store, knowledge, allow_private=allow_private)
        self.origin = origin  # this process, as fetch jobs name the process that runs them
        self.stale_after = stale_after
        self._passages: dict[int, tuple[str, dict[int, int]]] = {}  # site -> (version, document -> passages)
        self._tasks: set[asyncio.Task[None]] = set()

    async def fetch_in_background(self, site: Site, url: str, actor: Actor) -> FetchJob:
        """Record the fetch in the store (so any process shows it), then run it here. A URL that
        is not one is refused at once; whether it can be fetched, the job finds out."""
        url = url.strip()[:2000]
        check_http_url(url)
        job = await self.store.add_fetch_job(site.id, url, self.origin, now=time.time(),
                                             keep=MAX_JOBS_SHOWN)
        task = asyncio.create_task(self._fetch(site, RunningFetch(self.store, job), actor))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _fetch(self, site: Site, job: RunningFetch, actor: Actor) -> None:
        writer = asyncio.create_task(job.keep_writing())
        added: list[KnowledgeDocument] = []
        # Cancelled (the server stops): say so now rather than after the stale window.
        outcome: dict[str, object] = {"state": "interrupted", "message": INTERRUPTED}
        try:
            added = await self.ingest.add_url(site, job.url, progress=job.progress)
            outcome = {"state": "done", "added": len(added), "message": f"added {len(added)} page(s)"}
        except ParleyError as exc:
            outcome = {"state": "failed", "message": exc.message}
        except Exception as exc:  # noqa: BLE001 - shown to the admin, logged in full
            log.exception("fetching %s failed", job.url)
            outcome = {"state": "failed", "message": f"{type(exc).__name__}"}
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            try:
                await job.write(outcome)
            except StoreUnavailable as exc:  # readers will see it interrupted once it is stale
                log.warning("could not record how fetching %s ended: %s", job.url, exc)
        if outcome["state"] == "done":
            await self.audit.record(actor, "knowledge.add_url", site_id=site.id, target=job.url,
                                    pages=len(added))

    async def fetch_jobs(self, site: Site) -> list[dict[str, object]]:
        """The site's fetches, newest first, as whichever process runs them last wrote them."""
        now = time.time()
        return [job_view(job, now, self.stale_after)
                for job in await self.store.list_fetch_jobs(site.id, limit=MAX_JOBS_SHOWN)]

    async def add_text(self, site: Site, title: str, text: str, actor: Actor) -> None:
        document = await self.ingest.add_text(site, title.strip() or "Answer", text)
        await self.audit.record(actor, "knowledge.add", site_id=site.id, target=document.title)

    async def add_upload(self, site: Site, filename: str, data: bytes, actor: Actor) -> KnowledgeDocument:
        name = PurePath(filename.replace("\\", "/")).name[:200] or "upload"
        document = await self.ingest.add_bytes(site, name, data)
        await self.audit.record(actor, "knowledge.upload", site_id=site.id, target=name, size=len(data))
        return document

    async def documents(self, site: Site, limit: int = 1000) -> list[tuple[KnowledgeDocument, int]]:
        """The site's documents, each with its number of passages (as the index cuts them; counted
        again only when the site's documents change)."""
        version = await self.store.knowledge_version(site.id)
        documents = await self.store.list_documents(site.id, limit=limit)
        cached = self._passages.get(site.id)
        if cached is None or cached[0] != version:
            counts = await asyncio.to_thread(lambda: {d.id: len(split_sections(d)) for d in documents})
            cached = self._passages[site.id] = (version, counts)
            while len(self._passages) > MAX_SITES_COUNTED:
                self._passages.pop(next(iter(self._passages)))
        return [(d, cached[1].get(d.id, 0)) for d in documents]

    async def remove(self, site: Site, document_id: int, actor: Actor) -> bool:
        removed = await self.store.remove_document(site.id, document_id)
        if removed:
            await self.audit.record(actor, "knowledge.remove", site_id=site.id, target=str(document_id))
        return removed

    async def reindex(self, site: Site) -> int:
        return await self.knowledge.passage_count(site.id)

    async def try_question(self, site: Site, question: str) -> Tried:
        """Ask the site's assistant as a visitor would (its model, its handoff rules), with no
        history and no session: nothing is stored and no conversation is made."""
        question = question.strip()[:2000]
        retrieval = await self.knowledge.retrieve(site.id, question)
        lang = str({**DEFAULT_SETTINGS, **site.settings}.get("lang") or "en")
        parts: list[str] = []
        error = None
        answer = None
        try:
            async with asyncio.timeout(TRY_SECONDS):
                answer = await self.ai.answer(site, question, lang=lang, history=[])
                async with contextlib.aclosing(answer.chunks):  # type: ignore[type-var]
                    async for chunk in answer.chunks:
                        parts.append(chunk)
                        if sum(map(len, parts)) > TRY_MAX_CHARS:
                            break
        except TimeoutError:
            error = f"The model did not finish within {TRY_SECONDS} s."
        except ParleyError as exc:
            error = exc.message
        sources = set(answer.sources) if answer else set()
        return Tried(question, retrieval.relevance, [p for p in retrieval.passages if p.source in sources],
                     "".join(parts)[:TRY_MAX_CHARS], bool(answer and answer.handoff), error)

    async def gaps(self, site: Site, *, shown: int = GAPS_SHOWN) -> list[GapGroup]:
        """Questions the pages did not cover, and those that ended in a handoff, grouped, the
        `shown` most frequent. Not listed: greetings, requests for a person and nothing else, and
        uncovered questions the knowledge covers now (an answer was added since)."""
        rows = await self.store.knowledge_gaps(site.id, below=RELEVANCE_FLOOR, limit=GAPS_READ)
        phrases = ai_setting(site, "handoff_phrases", [])
        rows += [gap for gap in await self.store.handoff_questions(site.id, limit=HANDOFFS_READ)
                 if not only_asks_for_human(gap.question, phrases)]
        listed: list[GapGroup] = []
        for group in group_gaps(sorted(without_small_talk(rows), key=lambda g: g.asked_at, reverse=True)):
            if len(listed) >= shown:
                break
            if not group.handoffs and (await self.knowledge.retrieve(site.id, group.question)
                                       ).relevance >= RELEVANCE_FLOOR:
                continue
            listed.append(group)
        return listed

    async def close(self) -> None:
        """Stop the fetches under way, each marked interrupted in the store (within a few seconds)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_SECONDS)
