"""Knowledge ingest: files and URLs into a site's documents, the fetch safety rules, and the kb CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator

import pytest
import tornado.httpserver
import tornado.web

from server.knowledge import IngestError, KnowledgeService, check_public_url
from server.store.sqlite import SQLiteStore
from tests.harness import Parley, listening, reopened_without_column, session

ROOT = Path(__file__).resolve().parent.parent

PAGE = """<!doctype html><html><head><title>Warranty | Test shop</title>
<script>trackEverything()</script></head><body>
<nav><a href="/">Home</a> <a href="/cart">Cart</a> <a href="/login">Sign in</a></nav>
<main><article><h1>Warranty</h1>
<p>Every jacket carries a two-year warranty against manufacturing defects, seams and zippers
included. Send us a photo of the defect and we repair or replace the jacket free of charge.</p>
<h2>What is not covered</h2>
<p>Normal wear, accidents and alterations made by someone else are not covered by the warranty,
but our repair service can still help at a fair price.</p></article></main>
<footer>Copyright 2026 Test shop. Newsletter signup. Privacy policy. Cookie settings.</footer>
</body></html>"""


def make_pdf(text: str) -> bytes:
    """A one-page PDF showing `text`, with a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


class Website:
    """A small website on an unused loopback port: pages, a PDF, a sitemap, a redirect, a big file."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> tornado.web.Application:
        site = self

        class Page(tornado.web.RequestHandler):
            def get(self, path: str) -> None:
                site.hits.append(path)
                if path == "warranty":
                    self.set_header("Content-Type", "text/html; charset=utf-8")
                    self.write(PAGE)
                elif path.startswith("page"):
                    self.set_header("Content-Type", "text/html")
                    self.write(f"<html><head><title>Page {path}</title></head><body><article>"
                               f"<p>{'This is the help page number ' + path + '. ' * 1}"
                               f"It explains gift cards in detail for every customer.</p></article></body></html>")
                elif path == "care.pdf":
                    self.set_header("Content-Type", "application/pdf")
                    self.write(make_pdf("Wash the merino sweater cold and dry it flat."))
                elif path == "sitemap.xml":
                    self.set_header("Content-Type", "application/xml")
                    locs = "".join(f"<url><loc>{site.url}/page{n}</loc></url>" for n in range(1, 4))
                    self.write(f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/'
                               f'schemas/sitemap/0.9">{locs}</urlset>')
                elif path == "moved":
                    self.redirect("/warranty")
                elif path == "big":
                    self.set_header("Content-Type", "text/plain")
                    self.write("x" * 200_000)
                elif path == "image.png":
                    self.set_header("Content-Type", "image/png")
                    self.write(b"\x89PNG\r\n\x1a\n")
                else:
                    self.send_error(404)

        return tornado.web.Application([(r"/(.*)", Page)])


@pytest.fixture
async def website() -> AsyncIterator[Website]:
    site = Website()
    async with listening(tornado.httpserver.HTTPServer(site.app())) as site.port:
        yield site


def service(parley: Parley, **kwargs) -> KnowledgeService:
    return KnowledgeService(parley.services.store, parley.services.knowledge, **kwargs)


async def test_loopback_urls_are_refused_by_default(parley: Parley, website: Website):
    with pytest.raises(IngestError, match="private or local address"):
        await service(parley).add_url(parley.site, f"{website.url}/warranty")
    assert website.hits == []  # refused before any request


@pytest.mark.parametrize("url", ["http://10.1.2.3/", "http://169.254.169.254/latest/meta-data/",
                                 "http://[::1]:8080/", "http://100.64.0.1/", "http://0.0.0.0/",
                                 "http://192.168.1.1/", "http://[::ffff:127.0.0.1]/"])
async def test_private_and_local_addresses_are_refused(url: str):
    with pytest.raises(IngestError):
        await check_public_url(url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://example.com/",
                                 "http:///nohost"])
async def test_only_http_urls(url: str):
    with pytest.raises(IngestError, match="http"):
        await check_public_url(url, allow_private=True)


async def test_a_public_address_passes_the_check():
    await check_public_url("https://93.184.215.14/")


async def test_html_page_main_text_only(parley: Parley, website: Website):
    before = await parley.ask(session(1), "Is there a warranty on jackets?")
    assert not any(s["title"] == "Warranty" for s in before[-1]["meta"]["sources"])
    [document] = await service(parley, allow_private=True).add_url(parley.site, f"{website.url}/warranty")
    assert document.title == "Warranty"
    assert document.url == f"{website.url}/warranty"
    assert "two-year warranty" in document.content and "# Warranty" in document.content
    for noise in ("trackEverything", "Sign in", "Newsletter", "Cookie settings"):
        assert noise not in document.content
    # The server's index, built for the question before, picks the new document up by itself
    # (the knowledge_version its next question reads has changed).
    events = await parley.ask(session(1), "Is there a warranty on jackets?")
    assert {"title": "Warranty", "url": document.url} in events[-1]["meta"]["sources"]


async def test_adding_a_url_again_replaces_it(parley: Parley, website: Website):
    knowledge = service(parley, allow_private=True)
    await knowledge.add_url(parley.site, f"{website.url}/warranty")
    await knowledge.add_url(parley.site, f"{website.url}/warranty")
    urls = [d.url for d in await knowledge.list(parley.site)]
    assert urls.count(f"{website.url}/warranty") == 1


async def test_redirects_are_followed_and_checked(parley: Parley, website: Website):
    [document] = await service(parley, allow_private=True).add_url(parley.site, f"{website.url}/moved")
    assert document.url == f"{website.url}/warranty"


async def test_pdf_url(parley: Parley, website: Website):
    [document] = await service(parley, allow_private=True).add_url(parley.site, f"{website.url}/care.pdf")
    assert "Wash the merino sweater cold" in document.content


async def test_sitemap_with_a_page_limit(parley: Parley, website: Website):
    added = await service(parley, allow_private=True).add_url(parley.site, f"{website.url}/sitemap.xml",
                                                              sitemap_limit=2)
    assert [d.url for d in added] == [f"{website.url}/page1", f"{website.url}/page2"]
    assert "page3" not in website.hits


async def test_size_cap_and_types(parley: Parley, website: Website):
    knowledge = service(parley, allow_private=True, max_bytes=100_000)
    with pytest.raises(IngestError, match="larger than"):
        await knowledge.add_url(parley.site, f"{website.url}/big")
    with pytest.raises(IngestError, match="image/png"):
        await knowledge.add_url(parley.site, f"{website.url}/image.png")
    with pytest.raises(IngestError, match="HTTP 404"):
        await knowledge.add_url(parley.site, f"{website.url}/missing")


async def test_files_of_every_kind(parley: Parley, tmp_path: Path):
    knowledge = service(parley)
    (tmp_path / "gift-cards.md").write_text("# Gift cards\n\nGift cards never expire.")
    (tmp_path / "notes.txt").write_text("Our store opens at nine.")
    (tmp_path / "warranty.html").write_text(PAGE)
    (tmp_path / "care.pdf").write_bytes(make_pdf("Dry the merino sweater flat."))
    titles = {}
    for name in ("gift-cards.md", "notes.txt", "warranty.html", "care.pdf"):
        document = await knowledge.add_file(parley.site, tmp_path / name)
        titles[name] = (document.title, document.content)
    assert titles["gift-cards.md"] == ("Gift cards", "# Gift cards\n\nGift cards never expire.")
    assert titles["notes.txt"] == ("Notes", "Our store opens at nine.")
    assert titles["warranty.html"][0] == "Warranty" and "Newsletter" not in titles["warranty.html"][1]
    assert titles["care.pdf"] == ("Care", "Dry the merino sweater flat.")
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(IngestError, match="use .txt"):
        await knowledge.add_file(parley.site, tmp_path / "photo.jpg")


# -- the command line ------------------------------------------------------------------------------
def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return subprocess.run([sys.executable, "-m", "server", *args, "--data-dir", str(data_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)


def test_kb_commands(tmp_path: Path):
    site_key = json.loads(cli("site", "create", "--name", "Shop", "--json", data_dir=tmp_path).stdout)["site_key"]
    (tmp_path / "faq.md").write_text("# FAQ\n\nWe answer within a day.")
    (tmp_path / "care.pdf").write_bytes(make_pdf("Dry the sweater flat."))
    added = cli("kb", "add", "--site", site_key, str(tmp_path / "faq.md"), str(tmp_path / "care.pdf"),
                data_dir=tmp_path)
    assert added.returncode == 0, added.stderr
    assert "added document 1: FAQ" in added.stdout and "added document 2: Care" in added.stdout
    refused = cli("kb", "add", "--site", site_key, "http://127.0.0.1:9/x", data_dir=tmp_path)
    assert refused.returncode == 1 and "private or local address" in refused.stderr
    listed = json.loads(cli("kb", "list", "--site", site_key, "--json", data_dir=tmp_path).stdout)
    assert [d["title"] for d in listed] == ["FAQ", "Care"]
    reindexed = cli("kb", "reindex", "--site", site_key, data_dir=tmp_path)
    assert reindexed.returncode == 0 and "indexed 2 documents as 2 passages" in reindexed.stdout
    assert cli("kb", "remove", "--site", site_key, "1", data_dir=tmp_path).returncode == 0
    listed = json.loads(cli("kb", "list", "--site", site_key, "--json", data_dir=tmp_path).stdout)
    assert [d["title"] for d in listed] == ["Care"]
    for command in ("add", "list", "remove", "reindex"):
        assert cli("kb", command, "--help", data_dir=tmp_path).returncode == 0


async def test_a_data_directory_from_before_file_names_keeps_its_documents(tmp_path: Path):
    store = SQLiteStore(tmp_path / "parley.sqlite3")
    await store.open()
    site = await store.create_site("sk_" + "f" * 30, "Old", [], {})
    await store.add_document(site.id, "Returns", None, "60 days")
    store = await reopened_without_column(store, "documents", "file_name")
    try:
        [old] = await store.list_documents(site.id)
        assert (old.title, old.file_name) == ("Returns", None)
        await store.add_document(site.id, "Care", None, "Dry flat", file_name="care.md")
        assert [d.file_name for d in await store.list_documents(site.id)] == [None, "care.md"]
    finally:
        await store.close()
