"""The widget's Markdown renderer in a real chromium: every construct, odd markers, random text (issue 8.1).

Any message (an operator's, a model's answer mid-stream, a quoted passage) goes through this renderer,
so a string that makes it loop freezes the customer's page. Each batch runs under a deadline: a hang
fails the test instead of the suite.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from playwright.async_api import Browser

from server.store.models import Site
from tests.e2e.browser import Visit, visit
from tests.harness import Parley

# Renders each string to HTML and times it; any exception is reported with its input.
RENDER_ALL = """(texts) => texts.map((text) => {
  const box = document.createElement('div');
  const started = performance.now();
  try { box.appendChild(window.Parley.renderMarkdown(text)); }
  catch (e) { return {text, error: String(e)}; }
  return {text, html: box.innerHTML, ms: performance.now() - started};
})"""

CASES = {
    "plain text": "<p>plain text</p>",
    "**bold**": "<p><strong>bold</strong></p>",
    "*italic*": "<p><em>italic</em></p>",
    "_italic_": "<p><em>italic</em></p>",
    "a **b** c *d* e _f_ g": "<p>a <strong>b</strong> c <em>d</em> e <em>f</em> g</p>",
    "_it **bold** it_": "<p><em>it <strong>bold</strong> it</em></p>",
    "**bold _it_ bold**": "<p><strong>bold <em>it</em> bold</strong></p>",
    "[**Docs**](https://x.test/d) after":
        '<p><a href="https://x.test/d" target="_blank" rel="noopener noreferrer nofollow">**Docs**</a>'
        " after</p>",
    "see https://x.test/a.": '<p>see <a href="https://x.test/a" target="_blank" '
                             'rel="noopener noreferrer nofollow">https://x.test/a</a>.</p>',
    "[x](javascript:alert(1))": "<p>[x](javascript:alert(1))</p>",
    "- one\n- **two**": "<ul><li>one</li><li><strong>two</strong></li></ul>",
    "1. first\n2. second": "<ol><li>first</li><li>second</li></ol>",
    "# Title": '<p class="md-h">Title</p>',
    "line one\nline two": "<p>line one<br>line two</p>",
    "**unclosed": "<p>**unclosed</p>",
    "*": "<p>*</p>",
    "**": "<p>**</p>",
    "***": "<p>***</p>",
    "** **": "<p>** **</p>",
    "_": "<p>_</p>",
    "snake_case_name": "<p>snake_case_name</p>",
    "2 * 3 * 4": "<p>2 * 3 * 4</p>",
    "<img src=x onerror=alert(1)>": "<p>&lt;img src=x onerror=alert(1)&gt;</p>",
}


def random_markdownish(rng: random.Random) -> str:
    """Text built from the characters the renderer treats specially, plus words and line breaks."""
    pieces = ["*", "**", "***", "_", "__", "[", "]", "(", ")", "](", "https://", "x.test/", "#", "- ",
              "1. ", "\n", "\n\n", " ", "word", "é", "  ", "`", "<b>", ".", ":"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 60)))


@pytest.fixture
async def demo_page(parley: Parley, demo: Site, browser: Browser) -> Visit:
    v = await visit(browser, f"{parley.base_url}/demo")
    await v.page.wait_for_function("window.Parley && window.Parley.renderMarkdown")
    return v


async def render(v: Visit, texts: list[str]) -> list[dict]:
    # A renderer that loops never returns from evaluate(); the deadline turns that into a failure.
    try:
        return await asyncio.wait_for(v.page.evaluate(RENDER_ALL, texts), timeout=20)
    except TimeoutError:
        pytest.fail(f"rendering hung on one of: {texts!r}"[:2000])


async def test_every_construct_renders_as_expected(demo_page: Visit) -> None:
    results = await render(demo_page, list(CASES))
    got = {r["text"]: r.get("html", r.get("error")) for r in results}
    assert got == CASES
    assert demo_page.unexpected_errors() == []


async def test_nested_and_unbalanced_markers_and_random_text_render_quickly(demo_page: Visit) -> None:
    rng = random.Random(8001)  # fixed seed: a failure names a string that can be replayed
    texts = [random_markdownish(rng) for _ in range(3000)]
    texts += ["*" * n for n in range(1, 200, 7)] + ["_" * 500, "**a " * 500, "_a_" * 500,
                                                  "[a](" * 300, "**" + "x" * 3900 + "*"]
    slowest = 0.0
    for start in range(0, len(texts), 500):
        for result in await render(demo_page, texts[start:start + 500]):
            assert "error" not in result, result
            slowest = max(slowest, result["ms"])
    # Generous for a loaded CI machine; a looping or exponential renderer takes seconds or never ends.
    assert slowest < 250, f"the slowest string took {slowest:.0f} ms"
    assert demo_page.unexpected_errors() == []


async def test_the_dashboards_renderer_is_the_widgets(demo_page: Visit) -> None:
    """The dashboard loads /widget/markdown.js itself; the widget has it inlined by the server. Both draw
    every case, and random text, to the same HTML."""
    await demo_page.page.evaluate("""() => new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = '/widget/markdown.js';
      script.onload = resolve; script.onerror = reject;
      document.head.appendChild(script);
    })""")
    rng = random.Random(8002)
    texts = list(CASES) + [random_markdownish(rng) for _ in range(300)]
    both = await asyncio.wait_for(demo_page.page.evaluate("""(texts) => texts.map((text) => {
      const widget = document.createElement('div'), dashboard = document.createElement('div');
      widget.appendChild(window.Parley.renderMarkdown(text));
      dashboard.appendChild(window.parleyMarkdown.markdown(text));
      return [widget.innerHTML, dashboard.innerHTML];
    })""", texts), timeout=20)
    assert [w for w, _ in both] == [d for _, d in both]
    assert both[: len(CASES)] == [[html, html] for html in CASES.values()]
    assert demo_page.unexpected_errors() == []
