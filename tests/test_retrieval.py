"""Passages that make sense on their own, and a relevance floor under which nothing is quoted."""

from __future__ import annotations

from pathlib import Path

from server.ai.knowledge import KnowledgeBase
from server.ai.passages import split_sections
from server.demo import ensure_demo_site
from server.sites import SiteService
from server.store.models import KnowledgeDocument
from server.store.sqlite import SQLiteStore

PRICING = """# Plans and pricing

Every plan starts with a 30-day free trial.

## Prices

Our prices per month:

| Plan | Price | Sites |
|---|---|---|
| Starter | $9 | 1 |
| Growth | $14 | 3 |
| Business | $19 | 10 |

## Cancelling

- Open **Account Settings**

- Click **Cancel plan**

- Your stats stay until the end of the billing period
"""


def document(content: str, title: str = "Plans and pricing") -> KnowledgeDocument:
    return KnowledgeDocument(id=1, site_id=1, title=title, url="https://example.com/pricing",
                             content=content, updated_at="")


def test_a_table_stays_whole_under_its_heading_with_its_introduction():
    sections = split_sections(document(PRICING), size=60)  # far smaller than the table
    table = next(s for s in sections if "| Business | $19 | 10 |" in s.text)
    assert table.headings == ("Plans and pricing", "Prices")
    assert table.text.startswith("Our prices per month:")
    assert "| Starter | $9 | 1 |" in table.text


def test_a_loose_list_is_one_passage_and_the_opening_carries_the_title():
    sections = split_sections(document(PRICING))
    steps = next(s for s in sections if s.headings[-1] == "Cancelling")
    assert steps.text.count("\n") == 2 and "Cancel plan" in steps.text
    assert sections[0].headings == ("Plans and pricing",)
    assert sections[0].text == "Every plan starts with a 30-day free trial."


def test_a_huge_table_is_cut_between_rows_keeping_its_header():
    rows = "\n".join(f"| Plan {n} | ${n} |" for n in range(400))
    sections = split_sections(document(f"# T\n\n## Prices\n\n| Plan | Price |\n|---|---|\n{rows}", "T"))
    assert len(sections) > 1
    assert all(s.text.startswith("| Plan | Price |\n|---|---|") for s in sections)
    assert sum(s.text.count("| Plan ") for s in sections) == 400 + len(sections)


async def knowledge(tmp_path: Path) -> tuple[KnowledgeBase, SQLiteStore, int]:
    store = SQLiteStore(tmp_path / "kb.sqlite3")
    await store.open()
    site = await store.create_site("sk_retrieval_test_0000000000", "Shop", [], {})
    await store.add_document(site.id, "Plans and pricing", "https://example.com/pricing", PRICING)
    await store.add_document(site.id, "Shipping", "https://example.com/shipping",
                             "# Shipping\n\nWe ship to Canada in 4 to 7 business days.")
    return KnowledgeBase(store), store, site.id


async def test_a_question_the_pages_do_not_answer_gets_no_passage(tmp_path: Path):
    kb, store, site_id = await knowledge(tmp_path)
    try:
        # "plan" is on the pricing page, but the question is about stickers.
        unrelated = await kb.retrieve(site_id, "do you sell stickers with your plan?")
        assert unrelated.passages == [] and unrelated.relevance < kb.floor
        found = await kb.retrieve(site_id, "how much is the Busines plan per month")  # a typo
        assert found.passages and "| Business | $19 | 10 |" in found.passages[0].text
        assert found.relevance >= kb.floor
        assert all(p.score >= kb.floor for p in found.passages)
    finally:
        await store.close()


async def test_the_demo_sites_questions_in_visitors_own_words(tmp_path: Path):
    store = SQLiteStore(tmp_path / "demo.sqlite3")
    await store.open()
    try:
        site, _ = await ensure_demo_site(SiteService(store), store)
        kb = KnowledgeBase(store)
        # The pages write "the United Kingdom", never "UK"; "another" and "different" name no topic.
        for question, title in (("Do you ship to the UK?", "Shipping: Where we ship"),
                                ("How much does shipping to the UK cost?", "Shipping: Shipping costs"),
                                ("how do I exchange a jacket for another size", "Returns and exchanges: Exchanges"),
                                ("can I exchange for a different size", "Returns and exchanges: Exchanges")):
            found = await kb.retrieve(site.id, question)
            assert found.relevance >= kb.floor and title in [p.source.title for p in found.passages], question
        # An abbreviation the pages do not spell out is still something they do not cover.
        assert (await kb.retrieve(site.id, "Do you ship to the UAE?")).passages == []
    finally:
        await store.close()
