"""A site's knowledge base: documents cut into passages and searched with BM25 (bm25s)."""

from __future__ import annotations

import asyncio
import collections
import re
from dataclasses import dataclass

import bm25s
import Stemmer

from server.ai.base import Passage
from server.store.base import Store
from server.store.models import KnowledgeDocument, Source

PASSAGE_CHARS = 700
MAX_PASSAGES_PER_SITE = 50_000
HEADING_RE = re.compile(r"^#{1,6}\s+(.*)$")


def split_passages(document: KnowledgeDocument, *, size: int = PASSAGE_CHARS) -> list[tuple[str, str]]:
    """Cut a text or Markdown document into (heading, passage) pairs of about `size` characters.

    Paragraphs stay whole where they fit; each passage remembers the heading above it so a
    quote still makes sense on its own.
    """
    passages: list[tuple[str, str]] = []
    heading = document.title
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            passages.append((heading, "\n\n".join(buffer)))
            buffer.clear()

    for block in re.split(r"\n\s*\n", document.content):
        block = block.strip()
        if not block:
            continue
        first_line, _, rest = block.partition("\n")
        match = HEADING_RE.match(first_line)
        if match:
            flush()
            heading = match.group(1).strip() or document.title
            block = rest.strip()
            if not block:
                continue
        while len(block) > size:
            cut = block.rfind(" ", 0, size)
            cut = cut if cut > size // 2 else size
            flush()
            passages.append((heading, block[:cut].strip()))
            block = block[cut:].strip()
        if sum(len(b) for b in buffer) + len(block) > size:
            flush()
        buffer.append(block)
    flush()
    return passages


@dataclass
class _Index:
    version: str
    retriever: bm25s.BM25 | None
    passages: list[Passage]


class KnowledgeBase:
    """Per-site BM25 indexes, rebuilt when the site's documents change, cached for `max_sites`."""

    def __init__(self, store: Store, *, max_sites: int = 256, language: str = "english") -> None:
        self.store = store
        self.max_sites = max_sites
        self._stemmer = Stemmer.Stemmer(language)
        self._indexes: collections.OrderedDict[int, _Index] = collections.OrderedDict()
        self._locks: dict[int, asyncio.Lock] = {}

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(  # type: ignore[no-any-return]
            texts, stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False
        )

    def _build(self, version: str, documents: list[KnowledgeDocument]) -> _Index:
        passages: list[Passage] = []
        for document in documents:
            for heading, text in split_passages(document):
                title = document.title if heading == document.title else f"{document.title}: {heading}"
                passages.append(Passage(text=text, source=Source(title, document.url), score=0.0))
                if len(passages) >= MAX_PASSAGES_PER_SITE:
                    break
        if not passages:
            return _Index(version, None, [])
        retriever = bm25s.BM25()
        retriever.index(self._tokenize([p.text + " " + p.source.title for p in passages]),
                        show_progress=False)
        return _Index(version, retriever, passages)

    async def _index_for(self, site_id: int) -> _Index:
        version = await self.store.knowledge_version(site_id)
        cached = self._indexes.get(site_id)
        if cached is not None and cached.version == version:
            self._indexes.move_to_end(site_id)
            return cached
        lock = self._locks.setdefault(site_id, asyncio.Lock())
        async with lock:
            cached = self._indexes.get(site_id)
            if cached is not None and cached.version == version:
                return cached
            documents = await self.store.list_documents(site_id)
            index = await asyncio.to_thread(self._build, version, documents)
            self._indexes[site_id] = index
            while len(self._indexes) > self.max_sites:
                evicted, _ = self._indexes.popitem(last=False)
                self._locks.pop(evicted, None)
            return index

    async def passage_count(self, site_id: int) -> int:
        """Passages in the site's index, building it first if it is missing or stale."""
        return len((await self._index_for(site_id)).passages)

    async def search(self, site_id: int, query: str, *, k: int = 3, min_share: float = 0.8) -> list[Passage]:
        """The best passages for `query`: score above zero and at least `min_share` of the best.

        BM25 scores on a small knowledge base sit close together; on the demo shop, passages below
        about 80% of the best one were matches on a stray word ("take", "ship the new item").
        """
        index = await self._index_for(site_id)
        if index.retriever is None:
            return []
        tokens = self._tokenize([query])
        if not tokens[0]:
            return []
        k = min(k, len(index.passages))
        ids, scores = index.retriever.retrieve(tokens, k=k, show_progress=False)
        best = float(scores[0][0]) if k else 0.0
        found: list[Passage] = []
        for passage_id, score in zip(ids[0], scores[0]):
            score = float(score)
            if score <= 0 or score < best * min_share:
                continue
            passage = index.passages[int(passage_id)]
            found.append(Passage(passage.text, passage.source, score))
        return found
