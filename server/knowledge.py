"""Knowledge ingest: text, Markdown, HTML, PDF and URLs (one page or a sitemap) into a site's documents.

HTML keeps only the main text (trafilatura drops menus, footers and scripts) as Markdown, so headings
still label passages. URLs are fetched with timeouts and a size cap, over http(s) only, and never from
loopback, private, link-local or other non-public addresses unless the operator allows it: a
knowledge URL must not become a way to read the server's own network. (The host is resolved and
every address checked before each request and each redirect; a DNS answer that changes between the
check and the connection is not caught, so `allow_private` stays off on shared servers.)
The index itself is rebuilt by KnowledgeBase whenever store.knowledge_version changes.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin, urlsplit

import httpx

from server.ai.knowledge import KnowledgeBase
from server.errors import InvalidRequest
from server.store.base import Store
from server.store.models import KnowledgeDocument, Site

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 5 * 1024 * 1024
MAX_PDF_PAGES = 500
MAX_REDIRECTS = 5
DEFAULT_SITEMAP_LIMIT = 50
FETCH_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
USER_AGENT = "ParleyKnowledgeBot/1.0 (+self-hosted live chat)"
LOC_RE = re.compile(r"<loc>\s*([^<\s]+)\s*</loc>", re.IGNORECASE)
SUFFIX_KINDS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
                ".html": "html", ".htm": "html", ".pdf": "pdf"}


# A fetch's progress: (pages done, pages in all, why the last one was skipped or None).
Progress = Callable[[int, int, "str | None"], None]


class IngestError(InvalidRequest):
    """A source that cannot be added; the sentence says why."""


@dataclass(frozen=True)
class Extracted:
    title: str
    text: str


# -- extraction -----------------------------------------------------------------------------------
def document_title(path: Path, text: str) -> str:
    """The first Markdown heading, else the file name."""
    for line in text.splitlines()[:20]:
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("-", " ").replace("_", " ").capitalize()


def extract_html(html: str, fallback_title: str, url: str | None = None) -> Extracted:
    import trafilatura  # imported here: it is slow to import and only ingest needs it

    text = trafilatura.extract(html, url=url, output_format="markdown", include_links=False,
                               include_comments=False, include_images=False, favor_recall=True)
    metadata = trafilatura.extract_metadata(html, default_url=url)
    title = (metadata.title if metadata and metadata.title else "") or fallback_title
    return Extracted(title.strip(), (text or "").strip())


def extract_pdf(data: bytes, fallback_title: str) -> Extracted:
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages[:MAX_PDF_PAGES]]
        title = (reader.metadata.title if reader.metadata else None) or fallback_title
    except pypdf.errors.PyPdfError as exc:
        raise IngestError(f"This PDF cannot be read: {exc}") from exc
    return Extracted(str(title).strip(), "\n\n".join(p.strip() for p in pages if p.strip()))


def extract(data: bytes, kind: str, fallback_title: str, url: str | None = None) -> Extracted:
    if kind == "pdf":
        return extract_pdf(data, fallback_title)
    text = data.decode("utf-8", errors="replace")
    if kind == "html":
        return extract_html(text, fallback_title, url)
    return Extracted(document_title(Path(fallback_title), text), text.strip())


def kind_of_response(content_type: str, url: str, data: bytes) -> str:
    mime = content_type.split(";")[0].strip().lower()
    head = data[:2048].lstrip().lower()
    if mime == "application/pdf" or data.startswith(b"%PDF-"):
        return "pdf"
    if b"<urlset" in head or b"<sitemapindex" in head:
        return "sitemap"
    if mime in ("text/html", "application/xhtml+xml") or head.startswith((b"<!doctype html", b"<html")):
        return "html"
    if mime in ("text/plain", "text/markdown", "text/x-markdown"):
        return SUFFIX_KINDS.get(Path(urlsplit(url).path).suffix.lower(), "text")
    raise IngestError(f"{url} is {mime or 'of an unknown type'}; use HTML, text, Markdown or PDF.")


# -- fetching -------------------------------------------------------------------------------------
def check_http_url(url: str) -> None:
    """Refuse anything but an absolute http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IngestError(f"'{url}' is not an http(s) URL, such as https://example.com/help.")


async def check_public_url(url: str, *, allow_private: bool = False) -> None:
    """Refuse anything but http(s) to public addresses (every address the host resolves to)."""
    check_http_url(url)
    parts = urlsplit(url)
    if allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise IngestError(f"The host of {url} cannot be found.") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise IngestError(f"{url} points to a private or local address ({address}); "
                              "allow private addresses to fetch it (the server: --kb-allow-private or "
                              "PARLEY_KB_ALLOW_PRIVATE=1; `kb add`: --allow-private).")


class KnowledgeService:
    def __init__(self, store: Store, knowledge: KnowledgeBase | None = None, *,
                 allow_private: bool = False, max_bytes: int = MAX_DOCUMENT_BYTES,
                 timeout: httpx.Timeout = FETCH_TIMEOUT) -> None:
        self.store = store
        self.knowledge = knowledge or KnowledgeBase(store)
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.timeout = timeout

    # -- documents ----------------------------------------------------------------------------
    async def add_text(self, site: Site, title: str, text: str, url: str | None = None, *,
                       file_name: str | None = None) -> KnowledgeDocument:
        text = text.strip()
        if not text:
            raise IngestError(f"'{title}' has no text to add.")
        if url:  # adding a source again replaces it, so re-running `kb add` refreshes a page
            for document in await self.store.list_documents(site.id):
                if document.url == url:
                    await self.store.remove_document(site.id, document.id)
        return await self.store.add_document(site.id, title[:300], url, text, file_name=file_name)

    async def add_file(self, site: Site, path: Path, *, url: str | None = None,
                       title: str | None = None) -> KnowledgeDocument:
        self._file_kind(str(path))
        if path.stat().st_size > self.max_bytes:
            raise IngestError(f"{path} is larger than {self.max_bytes // (1024 * 1024)} MB.")
        return await self.add_bytes(site, str(path), path.read_bytes(), url=url, title=title)

    async def add_bytes(self, site: Site, name: str, data: bytes, *, url: str | None = None,
                        title: str | None = None) -> KnowledgeDocument:
        """A file's content (read from disk, or uploaded from the dashboard) by its name's suffix."""
        kind = self._file_kind(name)
        if len(data) > self.max_bytes:
            raise IngestError(f"{name} is larger than {self.max_bytes // (1024 * 1024)} MB.")
        if not data.strip():
            raise IngestError(f"{name} is empty.")
        if kind == "pdf" and not data.startswith(b"%PDF-"):
            raise IngestError(f"{name} is not a PDF file.")
        if kind != "pdf" and b"\x00" in data[:8192]:
            raise IngestError(f"{name} is not a text file; upload .txt, .md, .html or .pdf.")
        path = Path(name)
        fallback = path.stem.replace("-", " ").replace("_", " ").capitalize()
        extracted = await asyncio.to_thread(extract, data, kind, fallback if kind in ("html", "pdf") else name)
        return await self.add_text(site, title or extracted.title, extracted.text, url,
                                   file_name=None if url else path.name[:200])

    @staticmethod
    def _file_kind(name: str) -> str:
        kind = SUFFIX_KINDS.get(Path(name).suffix.lower())
        if kind is None:
            raise IngestError(f"{name}: use .txt, .md, .html or .pdf.")
        return kind

    async def add_url(self, site: Site, url: str, *, sitemap_limit: int = DEFAULT_SITEMAP_LIMIT,
                      title: str | None = None, progress: Progress | None = None) -> list[KnowledgeDocument]:
        """One page, or up to `sitemap_limit` pages of a sitemap (skipping pages that fail).
        `progress(done, total, error)` hears of each page as it is done (error: why it was skipped)."""
        report = progress or (lambda done, total, error: None)
        async with httpx.AsyncClient(timeout=self.timeout, headers={"User-Agent": USER_AGENT}) as client:
            final_url, content_type, data = await self._fetch(client, url)
            kind = kind_of_response(content_type, final_url, data)
            if kind != "sitemap":
                report(0, 1, None)
                added_page = await self._add_fetched(site, final_url, kind, data, title)
                report(1, 1, None)
                return [added_page]
            pages = await self._sitemap_pages(client, data, sitemap_limit)
            added: list[KnowledgeDocument] = []
            report(0, len(pages), None)
            for done, page in enumerate(pages, 1):
                error = None
                try:
                    page_url, page_type, page_data = await self._fetch(client, page)
                    page_kind = kind_of_response(page_type, page_url, page_data)
                    if page_kind != "sitemap":
                        added.append(await self._add_fetched(site, page_url, page_kind, page_data, None))
                except IngestError as exc:
                    log.warning("skipped %s: %s", page, exc.message)
                    error = exc.message
                report(done, len(pages), error)
            return added

    async def _add_fetched(self, site: Site, url: str, kind: str, data: bytes,
                           title: str | None) -> KnowledgeDocument:
        fallback = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or urlsplit(url).hostname or url
        extracted = await asyncio.to_thread(extract, data, kind, fallback, url)
        return await self.add_text(site, title or extracted.title, extracted.text, url)

    async def _sitemap_pages(self, client: httpx.AsyncClient, data: bytes, limit: int) -> list[str]:
        """Page URLs of a sitemap; a sitemap index is followed one level down."""
        text = data.decode("utf-8", errors="replace")
        locs = LOC_RE.findall(text)
        if "<sitemapindex" not in text[:2048].lower():
            return locs[:limit]
        pages: list[str] = []
        for child in locs:
            if len(pages) >= limit:
                break
            try:
                _, _, child_data = await self._fetch(client, child)
            except IngestError as exc:
                log.warning("skipped sitemap %s: %s", child, exc.message)
                continue
            pages.extend(LOC_RE.findall(child_data.decode("utf-8", errors="replace")))
        return pages[:limit]

    async def _fetch(self, client: httpx.AsyncClient, url: str) -> tuple[str, str, bytes]:
        """GET `url` (following redirects by hand, checking each hop); at most `max_bytes`."""
        for _ in range(MAX_REDIRECTS + 1):
            await check_public_url(url, allow_private=self.allow_private)
            try:
                async with client.stream("GET", url, follow_redirects=False) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise IngestError(f"{url} answered HTTP {response.status_code}.")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > self.max_bytes:
                        raise IngestError(f"{url} is larger than {self.max_bytes // 1024} KB.")
                    body = bytearray()
                    async for piece in response.aiter_bytes():
                        body += piece
                        if len(body) > self.max_bytes:
                            raise IngestError(f"{url} is larger than {self.max_bytes // 1024} KB.")
                    return url, response.headers.get("content-type", ""), bytes(body)
            except httpx.HTTPError as exc:
                raise IngestError(f"{url} could not be fetched ({type(exc).__name__}).") from exc
        raise IngestError(f"{url} redirects too many times.")

    async def list(self, site: Site) -> list[KnowledgeDocument]:
        return await self.store.list_documents(site.id)

    async def remove(self, site: Site, document_id: int) -> bool:
        return await self.store.remove_document(site.id, document_id)

    async def reindex(self, site: Site) -> tuple[int, int, float]:
        """Build the site's index now: (documents, passages, seconds). Servers rebuild on change."""
        started = time.monotonic()
        documents = await self.store.list_documents(site.id)
        passages = await self.knowledge.passage_count(site.id)
        return len(documents), passages, time.monotonic() - started
