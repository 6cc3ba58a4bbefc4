"""A site's knowledge base: passages searched with BM25 (bm25s), kept only above a relevance floor.

BM25 ranks passages but says nothing absolute: on a small knowledge base any one shared word makes
a "best" passage. So each candidate also gets a relevance between 0 and 1, the IDF-weighted share
of the question's content words that the passage (with its headings and page title) contains; a
word the site never uses weighs the most. Below RELEVANCE_FLOOR no passage is returned and the
answerer says it does not know. A misspelt word ("subscripton") is read as the site's word one
edit away, so typos do not make a question look unanswerable, and an abbreviation the site never
uses but spells out ("UK": "United Kingdom") as the words it stands for.
"""

from __future__ import annotations

import asyncio
import collections
import math
import re
from dataclasses import dataclass, field

import bm25s
import Stemmer

from server.ai.base import Passage
from server.ai.passages import split_sections
from server.store.base import Store
from server.store.models import KnowledgeDocument, Source

MAX_PASSAGES_PER_SITE = 50_000
# Chosen on the tuning half of the evaluation set (tests/data/eval/), checked on the other half.
RELEVANCE_FLOOR = 0.45
# Passages kept after the best one: within this much of its relevance.
RELEVANCE_SPREAD = 0.15
HEADING_WEIGHT = 0.5
CANDIDATES = 30
MIN_TYPO_WORD = 5
MAX_QUERY_WORDS = 64
WORD_RE = re.compile(r"\w\w+")
# "How long", "how often": the kind of answer wanted, not its topic.
HOW_RE = re.compile(r"\bhow\s+(?:long|often|soon|far|many|much)\b")
HYPHENATED_RE = re.compile(r"\b(\w+)-(\w+)\b")
# Names the site spells out ("United Kingdom", "European Union"), for the abbreviations visitors use.
NAME_RE = re.compile(r"\b[A-Z][a-z]+(?:\s+(?:of\s+|and\s+)?[A-Z][a-z]+){1,3}\b")
MAX_NAMES_PER_SITE = 10_000

# Function words, chat filler and light verbs ("give", "turn on", "make"): they carry no topic, so
# they neither match nor count as missing.
STOPWORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being
below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't
down during each few for from further had hadn't has hasn't have haven't having he her here hers
herself him himself his how i i'm if in into is isn't it it's its itself just let's me more most
mustn't my myself no nor not of off on once only or other ought our ours ourselves out over own same
she should shouldn't so some such than that that's the their theirs them themselves then there
there's these they they're this those through to too under until up very was wasn't we we're were
weren't what what's when where which while who whom why why's with won't would wouldn't you you're
your yours yourself yourselves u ur pls plz please hi hello hey thanks thank thx ok okay yes yeah
want wanted need needs know tell anyone someone something anything get got also still really
give gives make makes take takes turn turns go goes going keep keeps try tries
tried happen happens work works see put come say said let mean means
one many much lot lots way ways thing things another different
question questions im ive dont doesnt cant wont isnt whats hows wanna gonna would like could
""".split())


@dataclass
class _Index:
    version: str
    retriever: bm25s.BM25 | None
    passages: list[Passage]
    terms: list[frozenset[str]] = field(default_factory=list)
    heading_terms: list[frozenset[str]] = field(default_factory=list)
    idf: dict[str, float] = field(default_factory=dict)
    words: collections.Counter[str] = field(default_factory=collections.Counter)
    near: dict[str, list[str]] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)  # "uk": ["united", "kingdom"]

    @property
    def unseen_idf(self) -> float:
        """The weight of a word no passage contains: more than any word the site uses."""
        return math.log(len(self.passages) + 1.0) + 1.0


@dataclass(frozen=True)
class Retrieval:
    """The passages worth giving (best first), and the best relevance found, even below the floor."""

    passages: list[Passage]
    relevance: float


def _deletes(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


class KnowledgeBase:
    """Per-site BM25 indexes, rebuilt when the site's documents change, cached for `max_sites`."""

    def __init__(self, store: Store, *, max_sites: int = 256, language: str = "english",
                 floor: float = RELEVANCE_FLOOR) -> None:
        self.store = store
        self.max_sites = max_sites
        self.floor = floor
        self._stemmer = Stemmer.Stemmer(language)
        self._indexes: collections.OrderedDict[int, _Index] = collections.OrderedDict()
        self._locks: dict[int, asyncio.Lock] = {}

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(  # type: ignore[no-any-return]
            texts, stopwords=list(STOPWORDS), stemmer=self._stemmer, return_ids=False,
            show_progress=False)

    def _build(self, version: str, documents: list[KnowledgeDocument]) -> _Index:
        passages: list[Passage] = []
        indexed: list[str] = []
        headings: list[str] = []
        for document in documents:
            for section in split_sections(document):
                title = section.headings[-1] if len(section.headings) == 1 else \
                    f"{section.headings[0]}: {section.headings[-1]}"
                passages.append(Passage(text=section.text, source=Source(title, document.url), score=0.0))
                # The page title and headings count twice: they say what the passage is about.
                heading = " ".join(section.headings)
                # "pro-rated" is also "prorated", as visitors often write it.
                joined = " ".join(a + b for a, b in HYPHENATED_RE.findall(f"{heading} {section.text}"))
                indexed.append(f"{heading}\n{heading}\n{section.text}\n{joined}")
                # Its own heading (the title, for a page's opening): what this passage is about.
                headings.append(f"{section.headings[-1]} {joined}")
                if len(passages) >= MAX_PASSAGES_PER_SITE:
                    break
        if not passages:
            return _Index(version, None, [])
        tokens = self._tokenize(indexed)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        terms = [frozenset(t) for t in tokens]
        heading_terms = [frozenset(t) for t in self._tokenize(headings)]
        df = collections.Counter(term for passage_terms in terms for term in passage_terms)
        total = len(passages)
        idf = {t: math.log(1.0 + (total - n + 0.5) / (n + 0.5)) for t, n in df.items()}
        words = collections.Counter(w for text in indexed for w in WORD_RE.findall(text.lower()))
        near: dict[str, list[str]] = collections.defaultdict(list)
        for word in words:
            if len(word) >= MIN_TYPO_WORD - 1 and not word.isdigit():
                for variant in _deletes(word):
                    near[variant].append(word)
        names: dict[str, list[str]] = {}
        for text in indexed:
            for name in NAME_RE.findall(text):
                parts = [w for w in name.split() if w[0].isupper()]
                names.setdefault("".join(w[0] for w in parts).lower(), [w.lower() for w in parts])
            if len(names) >= MAX_NAMES_PER_SITE:
                break
        return _Index(version, retriever, passages, terms, heading_terms, idf, words, dict(near), names)

    async def _index_for(self, site_id: int, version: str | None = None) -> _Index:
        """The site's index as of `version` (read now when not given)."""
        if version is None:
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

    @staticmethod
    def _corrected(index: _Index, word: str) -> str:
        """`word`, or the site's word one edit away from it when the site never uses `word`."""
        if word in index.words or len(word) < MIN_TYPO_WORD or word.isdigit() or word in STOPWORDS:
            return word
        candidates: set[str] = set(index.near.get(word, ()))
        for variant in _deletes(word):
            if variant in index.words:
                candidates.add(variant)
            candidates.update(index.near.get(variant, ()))
        candidates = {c for c in candidates if abs(len(c) - len(word)) <= 1 and c not in STOPWORDS}
        return max(candidates, key=lambda c: (index.words[c], c)) if candidates else word

    @staticmethod
    def _spelled_out(index: _Index, words: list[str]) -> list[str]:
        """An abbreviation the site never uses but spells out ("uk": "United Kingdom") read as
        the words it stands for."""
        spelled: list[str] = []
        for word in words:
            name = index.names.get(word) if word not in index.words else None
            spelled.extend(name or [word])
        return spelled

    @staticmethod
    def _joined(index: _Index, words: list[str]) -> list[str]:
        """Two words the site writes as one ("non profit": "nonprofit") read as that one word."""
        joined: list[str] = []
        skip = False
        for first, second in zip(words, [*words[1:], ""]):
            if skip:
                skip = False
                continue
            together = first + second
            known = first in index.words and second in index.words  # "log in" stays two words
            if second and not known and (together in index.words or together.rstrip("s") in index.words):
                joined.append(together)
                skip = True
            else:
                joined.append(first)
        return joined

    @staticmethod
    def _coverage(weights: dict[str, float], terms: frozenset[str]) -> float:
        total = sum(weights.values())
        return sum(w for t, w in weights.items() if t in terms) / total if total else 0.0

    async def retrieve(self, site_id: int, query: str, *, k: int = 3, version: str | None = None
                       ) -> Retrieval:
        """The best passages for `query` that clear the relevance floor, at most `k`; `version`:
        the site's knowledge_version, when read already."""
        index = await self._index_for(site_id, version)
        if index.retriever is None:
            return Retrieval([], 0.0)
        words = self._spelled_out(index, WORD_RE.findall(HOW_RE.sub("how", query.lower()))[:MAX_QUERY_WORDS])
        corrected = " ".join(self._corrected(index, w) for w in self._joined(index, words))
        query_terms = list(dict.fromkeys(self._tokenize([corrected])[0]))
        if not query_terms:
            return Retrieval([], 0.0)
        count = min(CANDIDATES, len(index.passages))
        ids, scores = index.retriever.retrieve([query_terms], k=count, show_progress=False)
        weights = {t: index.idf.get(t, index.unseen_idf) for t in query_terms}
        ranked = []
        for passage_id, score in zip(ids[0].tolist(), scores[0].tolist()):
            if score <= 0:
                continue
            relevance = self._coverage(weights, index.terms[passage_id])
            # Among passages that cover the question alike, the one whose own heading names it wins:
            # "Delete your site data" over "Delete your account" for deleting a site's stats, a
            # page's opening over its later sections when the question is the page's title.
            rank = relevance + HEADING_WEIGHT * self._coverage(weights, index.heading_terms[passage_id])
            ranked.append((rank, score, relevance, passage_id))
        if not ranked:
            return Retrieval([], 0.0)
        ranked.sort(reverse=True)
        best = max(r[2] for r in ranked)
        found: list[Passage] = []
        for _, _, relevance, passage_id in ranked:
            if len(found) == k:
                break
            first = found[0].score if found else relevance
            if relevance < self.floor or relevance < first - RELEVANCE_SPREAD:
                continue
            passage = index.passages[passage_id]
            found.append(Passage(passage.text, passage.source, relevance))
        return Retrieval(found, best)
