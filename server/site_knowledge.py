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
from dataclasses import dataclass, field
from pathlib import PurePath

from server.ai.base import Passage
from server.ai.engine import AIEngine
from server.ai.knowledge import RELEVANCE_FLOOR, KnowledgeBase
from server.ai.passages import split_sections
from server.audit import Actor, AuditLog
from server.errors import ParleyError
from server.knowledge import KnowledgeService
from server.store.base import Store
from server.sites import DEFAULT_SETTINGS
from server.store.models import KnowledgeDocument, KnowledgeGap, Site

log = logging.getLogger(__name__)

MAX_JOBS_SHOWN = 20
MAX_ERRORS_SHOWN = 20
MAX_SITES_COUNTED = 256
TRY_SECONDS = 60  # Try the assistant waits this long for the whole answer
TRY_MAX_CHARS = 20_000
GAPS_READ = 500
HANDOFFS_READ = 200
WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Words that do not change what a question asks about.
FILLER = frozenset("a an the is are do does did can could i you we my your our me to of for in on at "
                   "it this that and or with what how please hi hello there any".split())


@dataclass
class FetchJob:
    url: str
    state: str = "fetching"  # fetching, done, failed
    added: int = 0
    message: str = ""
    started: float = field(default_factory=time.time)
    done: int = 0  # pages fetched (or skipped) so far
    total: int = 0  # pages to fetch: 1 for a page, a sitemap's pages once it is read
    errors: list[str] = field(default_factory=list)  # why pages were skipped (the first few)

    def progress(self, done: int, total: int, error: str | None) -> None:
        self.done, self.total = done, total
        if error and len(self.errors) < MAX_ERRORS_SHOWN:
            self.errors.append(error)

    def as_dict(self) -> dict[str, object]:
        return {"url": self.url, "state": self.state, "added": self.added, "message": self.message,
                "done": self.done, "total": self.total, "errors": list(self.errors)}


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
                 allow_private: bool = False) -> None:
        self.store = store
        self.knowledge = knowledge
        self.audit = audit
        self.ai = ai
        self.ingest = KnowledgeService(store, knowledge, allow_private=allow_private)
        self.jobs: dict[int, list[FetchJob]] = {}
        self._passages: dict[int, tuple[str, dict[int, int]]] = {}  # site -> (version, document -> passages)
        self._tasks: set[asyncio.Task[None]] = set()

    def fetch_in_background(self, site: Site, url: str, actor: Actor) -> FetchJob:
        job = FetchJob(url.strip()[:2000])
        jobs = self.jobs.setdefault(site.id, [])
        jobs.insert(0, job)
        del jobs[MAX_JOBS_SHOWN:]
        task = asyncio.create_task(self._fetch(site, job, actor))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _fetch(self, site: Site, job: FetchJob, actor: Actor) -> None:
        try:
            added = await self.ingest.add_url(site, job.url, progress=job.progress)
        except ParleyError as exc:
            job.state, job.message = "failed", exc.message
            return
        except Exception as exc:  # noqa: BLE001 - shown to the admin, logged in full
            log.exception("fetching %s failed", job.url)
            job.state, job.message = "failed", f"{type(exc).__name__}"
            return
        job.state, job.added = "done", len(added)
        job.message = f"added {len(added)} page(s)"
        await self.audit.record(actor, "knowledge.add_url", site_id=site.id, target=job.url, pages=len(added))

    async def add_text(self, site: Site, title: str, text: str, actor: Actor) -> None:
        document = await self.ingest.add_text(site, title.strip() or "Answer", text)
        await self.audit.record(actor, "knowledge.add", site_id=site.id, target=document.title)

    def fetching(self, site: Site) -> bool:
        return any(job.state == "fetching" for job in self.jobs.get(site.id, []))

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

    async def gaps(self, site: Site) -> list[GapGroup]:
        """Questions the pages did not cover, and those that ended in a handoff, grouped."""
        rows = await self.store.knowledge_gaps(site.id, below=RELEVANCE_FLOOR, limit=GAPS_READ)
        rows += await self.store.handoff_questions(site.id, limit=HANDOFFS_READ)
        return group_gaps(sorted(rows, key=lambda g: g.asked_at, reverse=True))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
