"""A site's knowledge from the dashboard: documents, URL and sitemap fetches in the background with
their progress, Try the assistant (passages and scores, no conversation), and the knowledge gaps
(questions the pages did not cover) grouped when they say the same thing."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field

from server.ai.knowledge import RELEVANCE_FLOOR, KnowledgeBase, Retrieval
from server.audit import Actor, AuditLog
from server.errors import ParleyError
from server.knowledge import KnowledgeService
from server.store.base import Store
from server.store.models import KnowledgeGap, Site

log = logging.getLogger(__name__)

MAX_JOBS_SHOWN = 20
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
    def __init__(self, store: Store, knowledge: KnowledgeBase, audit: AuditLog, *,
                 allow_private: bool = False) -> None:
        self.store = store
        self.knowledge = knowledge
        self.audit = audit
        self.ingest = KnowledgeService(store, knowledge, allow_private=allow_private)
        self.jobs: dict[int, list[FetchJob]] = {}
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
            added = await self.ingest.add_url(site, job.url)
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

    async def remove(self, site: Site, document_id: int, actor: Actor) -> bool:
        removed = await self.store.remove_document(site.id, document_id)
        if removed:
            await self.audit.record(actor, "knowledge.remove", site_id=site.id, target=str(document_id))
        return removed

    async def reindex(self, site: Site) -> int:
        return await self.knowledge.passage_count(site.id)

    async def try_question(self, site: Site, question: str) -> Retrieval:
        """What the assistant would be given for this question; nothing is stored."""
        return await self.knowledge.retrieve(site.id, question[:2000], k=5)

    async def gaps(self, site: Site) -> list[GapGroup]:
        """Questions the pages did not cover, and those that ended in a handoff, grouped."""
        rows = await self.store.knowledge_gaps(site.id, below=RELEVANCE_FLOOR, limit=GAPS_READ)
        rows += await self.store.handoff_questions(site.id, limit=HANDOFFS_READ)
        return group_gaps(sorted(rows, key=lambda g: g.asked_at, reverse=True))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
