"""The knowledge page, over HTTP: each document's passages, files uploaded (and refused with a clear
reason), a sitemap fetch whose progress and errors the page can read while it runs, and Try the
assistant showing the site's own model's answer with the passages it was given."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import httpx
import pytest
import tornado.httpserver
import tornado.web

from server.app import build_services, make_app
from server.knowledge import MAX_DOCUMENT_BYTES
from server.site_knowledge import INTERRUPTED
from tests.dashboard import Operator
from tests.fake_openai import FakeOpenAI, Plan
from tests.harness import Parley, listening
from tests.test_dashboard_ai import ai_form
from tests.test_dashboard_sites import admin, agent, post_form  # noqa: F401 - fixtures
from tests.test_knowledge_ingest import make_pdf
from tests.waiting import eventually

EXCHANGES = ("# Exchanges\n\nYou can exchange shoes within 30 days of delivery, unworn.\n\n## Refunds\n\n"
           "Refunds reach your card within five working days after we receive the parcel.")


def knowledge_url(parley: Parley) -> str:
    return f"/dashboard/sites/{parley.site_key}/knowledge"


async def upload(who: Operator, url: str, name: str, data: bytes) -> httpx.Response:
    return await who.client.post(url, data={"_xsrf": who.xsrf, "action": "upload"},
                                 files={"file": (name, data, "application/octet-stream")})


def document_row(page: str, title: str) -> str:
    return page.split(f"<td>{title}</td>", 1)[1].split("</tr>", 1)[0]


async def test_uploads_are_added_with_their_passages_or_refused_clearly(parley: Parley, admin: Operator):
    url = knowledge_url(parley)
    added = await upload(admin, url, "exchanges.md", EXCHANGES.encode())
    assert added.status_code == 302
    assert "Added Exchanges." in (await admin.client.get(added.headers["Location"])).text
    pdf = await upload(admin, url, "C:\\Users\\ana\\care-guide.pdf", make_pdf("Dry the merino sweater flat."))
    assert pdf.status_code == 302
    page = (await admin.get(url)).text
    assert '<td class="passages">2</td>' in document_row(page, "Exchanges")  # the page and its Refunds section
    assert '<td class="passages">1</td>' in document_row(page, "Care guide")
    # Each says which file it came from (the name only, not the uploader's folders).
    assert '<td class="page-cell">file: exchanges.md</td>' in document_row(page, "Exchanges")
    assert '<td class="page-cell">file: care-guide.pdf</td>' in document_row(page, "Care guide")
    documents = {d.title: d.content for d in await parley.services.store.list_documents(parley.site.id)}
    assert "Dry the merino sweater flat." in documents["Care guide"]
    refused = [("virus.exe", b"MZ\x90\x00", "use .txt, .md, .html or .pdf"),
               ("empty.txt", b"  \n", "empty.txt is empty"),
               ("fake.pdf", b"hello", "fake.pdf is not a PDF file"),
               ("binary.txt", b"\x00\x01\x02text", "is not a text file"),
               ("huge.txt", b"a" * (MAX_DOCUMENT_BYTES + 1), "larger than 5 MB")]
    for name, data, reason in refused:
        response = await upload(admin, url, name, data)
        assert response.status_code == 400 and reason in response.text, name
    no_file = await post_form(admin, url, action="upload")
    assert no_file.status_code == 400 and "Choose a file" in no_file.text
    assert len(await parley.services.store.list_documents(parley.site.id)) == len(documents)
    assert "knowledge.upload" in {e.action for e in await parley.services.audit.entries()}


class SlowWebsite:
    """A sitemap of three pages: one fine, one that waits for the test, one missing."""

    def __init__(self) -> None:
        self.port = 0
        self.gate = asyncio.Event()

    def app(self) -> tornado.web.Application:
        site = self

        class Page(tornado.web.RequestHandler):
            async def get(self, path: str) -> None:
                if path == "sitemap.xml":
                    locs = "".join(f"<url><loc>http://127.0.0.1:{site.port}/{p}</loc></url>"
                                   for p in ("fine", "slow", "missing"))
                    self.set_header("Content-Type", "application/xml")
                    self.write(f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</urlset>')
                elif path in ("fine", "slow"):
                    if path == "slow":
                        await asyncio.wait_for(site.gate.wait(), timeout=30)
                    self.set_header("Content-Type", "text/html")
                    self.write(f"<html><head><title>{path.title()} page</title></head><body><article><p>"
                               f"The {path} page explains how gift cards work for every customer.</p>"
                               "</article></body></html>")
                else:
                    self.send_error(404)

        return tornado.web.Application([(r"/(.*)", Page)])


@pytest.fixture
async def slow_website() -> AsyncIterator[SlowWebsite]:
    site = SlowWebsite()
    async with listening(tornado.httpserver.HTTPServer(site.app())) as site.port:
        try:
            yield site
        finally:
            site.gate.set()  # a page still held answers, so its connection can close


async def test_a_sitemap_fetch_shows_its_progress_and_errors_while_it_runs(
        parley: Parley, admin: Operator, agent: Operator, slow_website: SlowWebsite):
    parley.services.site_knowledge.ingest.allow_private = True  # the test website is on loopback
    url = knowledge_url(parley)
    started = await post_form(admin, url, action="add_url", url=f"http://127.0.0.1:{slow_website.port}/sitemap.xml")
    assert started.status_code == 302
    page = (await admin.get(url)).text
    assert 'data-fetching="1"' in page and "/dashboard/static/knowledge.js" in page

    async def jobs() -> dict:
        response = await admin.get(f"{url}/jobs")
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
        return response.json()

    running = await eventually(lambda: _with_done(jobs, 1), what="the first page to be fetched")
    assert running["fetching"] is True
    job = running["jobs"][0]
    assert job["started_at"] <= job["updated_at"] and isinstance(job["id"], int)
    assert {k: v for k, v in job.items() if k not in ("id", "started_at", "updated_at")} == {
        "url": f"http://127.0.0.1:{slow_website.port}/sitemap.xml", "state": "fetching", "added": 0,
        "message": "", "done": 1, "total": 3, "errors": []}
    await _let_the_fetch_finish(slow_website, jobs, what="the fetch to end")
    page = (await admin.get(url)).text
    assert 'data-fetching="0"' in page and "answered HTTP 404" in page and "3 of 3 page(s)" in page
    assert (await agent.get(f"{url}/jobs")).status_code == 403


@pytest.fixture
async def second_process(parley: Parley) -> AsyncIterator[str]:
    """Another server process over the same data directory (its own store connection, on its own
    port), as supervisord runs several behind one port: its base URL."""
    services = await build_services(parley.services.config)
    try:
        async with listening(tornado.httpserver.HTTPServer(make_app(services))) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        await services.close()


async def test_another_process_shows_the_fetch_progress_and_a_dead_process_fetch_as_interrupted(
        parley: Parley, admin: Operator, slow_website: SlowWebsite, second_process: str):
    parley.services.site_knowledge.ingest.allow_private = True  # the test website is on loopback
    url = knowledge_url(parley)
    # A fetch whose process died mid-way: its last write is two minutes old.
    await parley.services.store.add_fetch_job(parley.site.id, "https://shop.test/sitemap.xml", "dead-process",
                                              now=time.time() - 120)
    sitemap = f"http://127.0.0.1:{slow_website.port}/sitemap.xml"
    assert (await post_form(admin, url, action="add_url", url=sitemap)).status_code == 302
    async with httpx.AsyncClient(base_url=second_process, cookies=admin.client.cookies, timeout=30) as elsewhere:
        async def jobs() -> dict:
            response = await elsewhere.get(f"{url}/jobs")
            assert response.status_code == 200
            return response.json()

        running = await eventually(lambda: _with_done(jobs, 1), what="the other process to see a page done")
        live, dead = running["jobs"]
        assert running["fetching"] is True
        assert (live["url"], live["state"], live["done"], live["total"]) == (sitemap, "fetching", 1, 3)
        assert (dead["state"], dead["message"]) == ("interrupted", INTERRUPTED)
        assert 'data-fetching="1"' in (await elsewhere.get(url)).text
        await _let_the_fetch_finish(slow_website, jobs, what="the other process to see it end")
        page = (await elsewhere.get(url)).text
        assert 'data-fetching="0"' in page and "3 of 3 page(s)" in page and "interrupted" in page


async def _let_the_fetch_finish(slow_website: SlowWebsite, jobs, *, what: str) -> dict:
    """Let the slow website answer, wait for `jobs` to show the fetch done, and check its outcome:
    three pages, two added, the missing one's 404 listed."""
    slow_website.gate.set()
    finished = await eventually(lambda: _with_state(jobs, "done"), what=what)
    job = finished["jobs"][0]
    assert finished["fetching"] is False and (job["done"], job["total"], job["added"]) == (3, 3, 2)
    assert job["errors"] == [f"http://127.0.0.1:{slow_website.port}/missing answered HTTP 404."]
    return finished


async def _with_done(jobs, done: int) -> dict | None:
    data = await jobs()
    return data if data["jobs"] and data["jobs"][0]["done"] >= done else None


async def _with_state(jobs, state: str) -> dict | None:
    data = await jobs()
    return data if data["jobs"] and data["jobs"][0]["state"] == state else None


async def test_try_the_assistant_shows_the_offline_answer_and_makes_no_conversation(parley: Parley,
                                                                                   admin: Operator):
    url = knowledge_url(parley)
    before = await parley.services.store.list_inbox([parley.site.id])
    tried = (await admin.get(url, q="How long does shipping take?")).text
    answer = tried.split('<blockquote class="tried-answer">', 1)[1].split("</blockquote>", 1)[0]
    passages = tried.split('<ol class="tried-passages">', 1)[1].split("</ol>", 1)[0]
    assert "shipping" in answer.lower() and "score" in passages
    handoff = (await admin.get(url, q="Can I talk to a human?")).text
    assert "This would hand the visitor to a person." in handoff
    assert await parley.services.store.list_inbox([parley.site.id]) == before


async def test_try_the_assistant_uses_the_site_model(parley: Parley, admin: Operator, fake_openai: FakeOpenAI):
    site_url = f"/dashboard/sites/{parley.site_key}"
    assert (await post_form(admin, f"{site_url}/ai", **ai_form(fake_openai))).status_code == 302
    fake_openai.script(Plan(tokens=["Parcels ", "arrive in ", "3 days."]))
    tried = (await admin.get(f"{site_url}/knowledge", q="How long does shipping take?")).text
    assert '<blockquote class="tried-answer">Parcels arrive in 3 days.</blockquote>' in tried
    prompt = str(fake_openai.requests[-1]["messages"])
    first_passage = tried.split('<ol class="tried-passages">', 1)[1].split("<blockquote>", 1)[1].split("</blockquote>")[0]
    assert first_passage[:40] in prompt.replace("\\n", "\n")  # the model was given the passages shown
    fake_openai.script(Plan(status=401, error_body='{"error": {"message": "bad key"}}'))
    failed = (await admin.get(f"{site_url}/knowledge", q="How long does shipping take?")).text
    assert "The assistant failed:" in failed
    assert await parley.services.store.list_inbox([parley.site.id]) == []


async def test_a_fetch_under_way_when_the_server_stops_is_marked_interrupted_at_once(
        parley: Parley, admin: Operator, slow_website: SlowWebsite):
    knowledge = parley.services.site_knowledge
    knowledge.ingest.allow_private = True  # the test website is on loopback
    url = knowledge_url(parley)
    await post_form(admin, url, action="add_url", url=f"http://127.0.0.1:{slow_website.port}/sitemap.xml")

    async def first_page_written() -> bool:
        return any(j.done >= 1 for j in await parley.services.store.list_fetch_jobs(parley.site.id))

    await eventually(first_page_written, what="the first page's progress written")
    await knowledge.close()  # as on SIGTERM, while the slow page is still being fetched
    [job] = await parley.services.store.list_fetch_jobs(parley.site.id)
    assert (job.state, job.done, job.total, job.message) == ("interrupted", 1, 3, INTERRUPTED)
    shown = (await admin.get(f"{url}/jobs")).json()
    assert shown["fetching"] is False and shown["jobs"][0]["state"] == "interrupted"
