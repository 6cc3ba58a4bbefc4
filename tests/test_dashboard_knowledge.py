"""Knowledge from the dashboard: documents, Try the assistant (passages and scores, no conversation
made), a URL fetched in the background, Add an answer from a knowledge gap; gap grouping."""

from __future__ import annotations

from server.site_knowledge import group_gaps
from server.store.models import KnowledgeGap
from tests.dashboard import Operator
from tests.harness import Parley, session
from tests.test_dashboard_sites import admin, post_form  # noqa: F401 - admin is a fixture
from tests.waiting import eventually


def test_gaps_saying_the_same_thing_are_grouped_most_frequent_first():
    gaps = [("Do you ship to Mars?", 0.1, "2026-01-03"), ("Is there a student discount", 0.2, "2026-01-02"),
            ("do you ship to mars", 0.3, "2026-01-02"), ("Ship to Mars?!", 0.0, "2026-01-01"),
            ("Is there a student discount?", 0.1, "2026-01-01"), ("Can I pay in bitcoin?", 0.0, "2026-01-01"),
            ("Ships to Mars?", 0.0, "2025-12-31")]
    groups = group_gaps([KnowledgeGap(q, r, f"sess_{n:016d}", at) for n, (q, r, at) in enumerate(gaps)])
    assert [(g.question, g.count) for g in groups] == [
        ("Do you ship to Mars?", 4), ("Is there a student discount", 2), ("Can I pay in bitcoin?", 1)]
    assert groups[0].relevance == 0.3 and groups[0].last_asked == "2026-01-03"


def test_questions_that_ended_in_a_handoff_join_the_gaps_once():
    below = KnowledgeGap("Where is my parcel?", 0.1, "sess_a000000000000000", "2026-01-03T10:00:00Z")
    gaps = [KnowledgeGap("I want a person", None, "sess_b000000000000000", "2026-01-04T10:00:00Z", handoff=True),
            below, KnowledgeGap("Where is my parcel?", 0.1, "sess_a000000000000000", "2026-01-03T10:00:00Z",
                                handoff=True),  # the same question, also listed as a handoff
            KnowledgeGap("where is my parcel", 0.3, "sess_c000000000000000", "2026-01-02T10:00:00Z")]
    groups = group_gaps(gaps)
    assert [(g.question, g.count, g.handoffs, g.relevance) for g in groups] == [
        ("Where is my parcel?", 2, 1, 0.3), ("I want a person", 1, 1, None)]


async def test_documents_try_and_gaps(parley: Parley, admin: Operator):
    url = f"/dashboard/sites/{parley.site_key}/knowledge"
    page = await admin.get(url)
    assert page.status_code == 200 and "https://shop.test/" in page.text
    before = await parley.services.store.list_inbox([parley.site.id])
    tried = await admin.get(url, q="How long does shipping take?")
    assert "score" in tried.text and "Best relevance" in tried.text
    assert await parley.services.store.list_inbox([parley.site.id]) == before  # no conversation made
    # A question the pages do not cover becomes a gap; Add an answer makes it covered.
    await parley.ask(session("gap"), "Do you sell zeppelin tickets?")
    gaps = await admin.get(url)
    assert "Do you sell zeppelin tickets?" in gaps.text
    added = await post_form(admin, url, action="add_text", title="Do you sell zeppelin tickets?",
                            text="Yes: zeppelin tickets are sold at the front desk for 20 euros.")
    assert added.status_code == 302
    assert '<p class="notice"' in (await admin.client.get(added.headers["location"])).text
    # Only notices the server wrote are shown: not text put in a link.
    forged = await admin.get(url, notice="Your session expired: sign in again at https://evil.example")
    assert forged.status_code == 200 and "evil.example" not in forged.text
    covered = await admin.get(url, q="zeppelin tickets")
    assert "front desk" in covered.text
    # Answered now, so no longer a gap.
    assert [g.question for g in await parley.services.site_knowledge.gaps(parley.site)] == []
    documents = await parley.services.store.list_documents(parley.site.id)
    zeppelin = next(d for d in documents if "zeppelin" in d.content)
    assert (await post_form(admin, url, action="remove", document_id=str(zeppelin.id))).status_code == 302
    assert (await post_form(admin, url, action="reindex")).status_code == 302
    # Not a URL at all: refused on the spot, no job.
    refused = await post_form(admin, url, action="add_url", url="not a url")
    assert refused.status_code == 400 and "is not an http(s) URL" in refused.text
    assert await parley.services.store.list_fetch_jobs(parley.site.id) == []
    # A fetch that fails says so on the page, in the background.
    await post_form(admin, url, action="add_url", url="http://127.0.0.1:9/nothing")
    async def ended() -> list:
        return [j for j in await parley.services.store.list_fetch_jobs(parley.site.id) if j.state != "fetching"]

    jobs = await eventually(ended, what="the fetch to end")
    assert jobs[0].state == "failed"
    assert "failed" in (await admin.get(url)).text
    actions = {e.action for e in await parley.services.audit.entries()}
    assert {"knowledge.add", "knowledge.remove"} <= actions


async def test_a_question_that_ended_in_a_handoff_is_a_gap_with_add_an_answer(parley: Parley, admin: Operator):
    url = f"/dashboard/sites/{parley.site_key}/knowledge"
    events = await parley.ask(session("handoff"), "Can I talk to a human about my invoice?")
    assert events[-1]["meta"]["handoff"] is True
    page = (await admin.get(url)).text
    row = page.split("Can I talk to a human about my invoice?</td>", 1)[1].split("</tr>", 1)[0]
    assert row.startswith("<td>1</td><td>1</td><td>–</td>")  # asked once, handed off once, no AI answer
    assert 'value="Can I talk to a human about my invoice?"' in row and "Add an answer" in row
    # Asking only for a person asks the knowledge nothing: no gap.
    for n, only_a_person in enumerate(("I want to talk to a human", "Can I please speak to a person now?")):
        events = await parley.ask(session(f"person-only-{n}"), only_a_person)
        assert events[-1]["meta"]["handoff"] is True
        assert only_a_person not in (await admin.get(url)).text
