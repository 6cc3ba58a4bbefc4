"""Cutting a document into passages a visitor can read on their own.

A passage carries the headings above it (page title › section › subsection), so a quote still says
what it is about, and so a question that names the topic finds it. Tables and lists stay whole under
their heading (up to a hard cap), with the sentence that introduces them: a pricing table cut away
from its heading, or a list of steps cut in two, answers nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.store.models import KnowledgeDocument

PASSAGE_CHARS = 900
# A table or list longer than this is cut after all, between rows or items (a table's header row
# repeated), so one passage never floods a prompt.
MAX_BLOCK_CHARS = 3 * PASSAGE_CHARS
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LIST_ITEM_RE = re.compile(r"^\s{0,3}(?:[-*+•]|\d{1,3}[.)])\s+")
BOLD_LINE_RE = re.compile(r"^\*\*[^*]+\*\*:?$")
SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Section:
    """A passage of a document: its heading path (title first) and its text."""

    headings: tuple[str, ...]
    text: str

    @property
    def heading(self) -> str:
        return " › ".join(self.headings)


@dataclass
class _Block:
    kind: str  # "text", "list", "table"
    text: str


def _kind(block: str) -> str:
    lines = [line for line in block.splitlines() if line.strip()]
    if lines and all(line.lstrip().startswith("|") for line in lines):
        return "table"
    if lines and LIST_ITEM_RE.match(lines[0]):
        return "list"
    return "text"


def _blocks(body: str) -> list[_Block]:
    """Paragraphs, lists and tables; a loose list (items apart) is one list, and a sentence that
    introduces a list or table (it ends with ':') or a bold line (a label) joins what follows."""
    blocks: list[_Block] = []
    for raw in re.split(r"\n\s*\n", body):
        raw = raw.strip("\n")
        if not raw.strip():
            continue
        kind = _kind(raw)
        previous = blocks[-1] if blocks else None
        continues_list = previous is not None and previous.kind == "list" and (
            kind == "list" or raw.startswith(("  ", "\t")))
        if continues_list and previous is not None:
            previous.text += "\n" + raw
            continue
        if previous is not None and previous.kind == "text" and (
                previous.text.rstrip().endswith(":") or BOLD_LINE_RE.match(previous.text.strip())):
            previous.text += "\n" + raw.strip()
            previous.kind = kind if kind != "text" else "text"
            continue
        blocks.append(_Block(kind, raw.strip() if kind == "text" else raw.rstrip()))
    return blocks


def _cut_rows(block: _Block, size: int) -> list[str]:
    """A table or list longer than MAX_BLOCK_CHARS, cut between rows (a table keeps its header)."""
    lines = block.text.splitlines()
    header: list[str] = []
    if block.kind == "table" and len(lines) > 2 and set(lines[1].replace("|", "").strip()) <= set("-: "):
        header, lines = lines[:2], lines[2:]
    pieces: list[str] = []
    current: list[str] = list(header)
    for line in lines:
        starts_item = block.kind == "table" or LIST_ITEM_RE.match(line)
        if starts_item and len(current) > len(header) and len("\n".join(current + [line])) > size:
            pieces.append("\n".join(current))
            current = list(header)
        current.append(line)
    if len(current) > len(header):
        pieces.append("\n".join(current))
    return pieces


def _cut_text(text: str, size: int) -> list[str]:
    """A long paragraph, cut between sentences (or words, for a sentence longer than `size`)."""
    pieces: list[str] = []
    current = ""
    for sentence in SENTENCE_END_RE.split(text):
        while len(sentence) > size:
            cut = sentence.rfind(" ", 0, size)
            cut = cut if cut > size // 2 else size
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > size:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return pieces


def _pieces(block: _Block, size: int) -> list[str]:
    if block.kind in ("list", "table"):
        return [block.text] if len(block.text) <= MAX_BLOCK_CHARS else _cut_rows(block, size)
    return [block.text] if len(block.text) <= size else _cut_text(block.text, size)


def _sections(document: KnowledgeDocument) -> list[tuple[tuple[str, ...], str]]:
    """(heading path, body) for the text under each heading, in order."""
    title = document.title.strip() or "Untitled"
    path: list[tuple[int, str]] = []
    found: list[tuple[tuple[str, ...], str]] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        text = "\n".join(body).strip()
        if text:
            found.append(((title, *(h for _, h in path)), text))
        body.clear()

    for line in document.content.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else HEADING_RE.match(line)
        if match is None:
            body.append(line)
            continue
        flush()
        level, heading = len(match.group(1)), match.group(2).strip()
        if level == 1 and heading.lower() == title.lower():
            path.clear()
            continue
        while path and path[-1][0] >= level:
            path.pop()
        if heading:
            path.append((level, heading))
    flush()
    return found


def split_sections(document: KnowledgeDocument, *, size: int = PASSAGE_CHARS) -> list[Section]:
    """Cut a text or Markdown document into passages of about `size` characters under their headings.

    Paragraphs are packed together while they fit; a paragraph longer than `size` is cut between
    sentences; a list or a table is kept whole (up to MAX_BLOCK_CHARS) with its introduction.
    """
    sections: list[Section] = []
    for headings, body in _sections(document):
        packed: list[str] = []
        for block in _blocks(body):
            for piece in _pieces(block, size):
                if packed and len("\n\n".join(packed)) + 2 + len(piece) > size:
                    sections.append(Section(headings, "\n\n".join(packed)))
                    packed = []
                packed.append(piece)
        if packed:
            sections.append(Section(headings, "\n\n".join(packed)))
    return sections
