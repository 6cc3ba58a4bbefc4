"""Driving Debian's chromium with Playwright (never `playwright install`): launch, pages, evidence."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Dialog, Locator, Page

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "e2e"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    """The system chromium; a missing browser fails loudly unless PARLEY_SKIP_BROWSER=1."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("PARLEY_SKIP_BROWSER") == "1":
            pytest.skip("PARLEY_SKIP_BROWSER=1: browser tests skipped")
        pytest.fail("chromium is not installed: run scripts/test (it installs Debian's chromium with "
                    "apt-get) or set PARLEY_SKIP_BROWSER=1 to skip the browser tests.")
    return path


@dataclass
class Visit:
    """One page with everything a user would notice going wrong: console errors, crashes, alerts."""

    page: Page
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)  # as devtools lists them, in red

    def widget(self, selector: str = "") -> Locator:
        # Playwright's CSS engine pierces open shadow roots, so this reaches inside the widget.
        return self.page.locator(f"parley-chat {selector}".strip())

    async def open_chat(self) -> None:
        await self.widget(".launcher").click()
        await self.widget(".panel").wait_for(state="visible")

    async def ask(self, text: str) -> None:
        await self.widget("textarea").fill(text)
        await self.widget("textarea").press("Enter")

    async def session_id(self) -> str:
        await self.widget(".launcher").wait_for()
        return str(await self.page.evaluate("window.Parley.sessionId"))

    async def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await self.page.screenshot(path=str(path))
        return path

    def unexpected_errors(self, allowed: str | None = None) -> list[str]:
        return [e for e in self.errors if not (allowed and re.search(allowed, e))]


async def visit(browser: Browser, url: str, **context: Any) -> Visit:
    ctx = await browser.new_context(**{"viewport": {"width": 1200, "height": 800}, **context})
    page = await ctx.new_page()
    seen = Visit(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.errors.append(message.text)

    def on_dialog(dialog: Dialog) -> None:
        seen.dialogs.append(dialog.message)
        asyncio.ensure_future(dialog.dismiss())

    page.on("console", on_console)
    page.on("pageerror", lambda error: seen.errors.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: seen.failed_requests.append(
        f"{request.method} {request.url}: {request.failure}"))
    page.on("dialog", on_dialog)
    await page.goto(url)
    return seen
