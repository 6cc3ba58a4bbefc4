"""The widget in a real chromium, on the demo page, against a real Parley (issue 5, item 8)."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from PIL import Image
from playwright.async_api import Browser, expect

from server.store.models import Site
from tests.e2e.browser import ROOT, Visit, visit
from tests.harness import Parley
from tests.waiting import until_held

DOCS_SCREENSHOT = ROOT / "docs" / "widget.png"

# Records the text of the answer being streamed each time the DOM changes, until `done`.
RECORD_STREAM = """() => {
  const root = document.querySelector('parley-chat').shadowRoot;
  window.__snapshots = [];
  new MutationObserver(() => {
    const answer = root.querySelector('.msg.streaming');
    if (answer) window.__snapshots.push(answer.textContent);
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


def demo_url(parley: Parley) -> str:
    return f"{parley.base_url}/demo"


async def test_answer_streams_in_steps_and_survives_a_reload(parley: Parley, demo: Site,
                                                            browser: Browser) -> None:
    v = await visit(browser, demo_url(parley))
    await v.open_chat()
    await expect(v.widget("header")).to_contain_text("Northwind help")
    await expect(v.widget(".log")).to_contain_text("Northwind's assistant")  # the site's greeting
    await v.page.evaluate(RECORD_STREAM)
    # The answer's response is read to its end, not cancelled: devtools would list it as failed.
    async with v.page.expect_event("requestfinished", lambda request: "/chat/stream" in request.url,
                                   timeout=10_000):
        await v.ask("Do you ship to Canada?")
        answer = v.widget(".msg.bot").last
        await expect(answer.locator(".src a").first).to_be_visible(timeout=10_000)  # sources come with `done`
        await expect(answer).to_contain_text("Canada")
    assert v.failed_requests == []  # neither the answer's stream nor the held history request

    snapshots = [s for s in await v.page.evaluate("window.__snapshots") if s]
    final = await answer.text_content() or ""
    growth = sorted(set(snapshots), key=len)
    assert len(growth) >= 2, f"the answer appeared in one piece: {growth}"
    assert all(final.startswith(s) for s in growth), "each step extends the one before"
    if os.environ.get("PARLEY_UPDATE_DOCS") == "1" or not DOCS_SCREENSHOT.exists():
        await v.page.screenshot(path=str(DOCS_SCREENSHOT))
    await v.screenshot("answer")

    session_id = await v.session_id()
    stored = await v.page.evaluate(f"localStorage.getItem('parley:{demo.site_key}')")
    assert stored == session_id and session_id.startswith("sess_") and len(session_id) == 37

    await v.page.reload()
    await v.widget(".launcher").wait_for()
    if not await v.widget(".panel").is_visible():
        await v.open_chat()
    # "You: " is for screen readers (visually hidden): the bubbles differ on screen only by colour.
    await expect(v.widget(".msg.visitor")).to_have_text(["You: Do you ship to Canada?"])
    await expect(v.widget(".msg.bot").last).to_contain_text("Canada")
    await expect(v.widget(".src")).to_have_count(1)  # restored once, not doubled by the live loop
    assert await v.session_id() == session_id
    await v.screenshot("after-reload")
    assert v.unexpected_errors() == []


async def test_operator_reply_shows_live_with_name_and_html_stays_text(
        parley: Parley, demo: Site, browser: Browser) -> None:
    v = await visit(browser, demo_url(parley))
    await v.open_chat()
    await v.ask("How long do refunds take?")
    await expect(v.widget(".msg.bot .src").last).to_be_visible(timeout=10_000)
    await expect(v.widget(".mode")).to_have_text("AI assistant")
    session_id = await v.session_id()
    await until_held(parley.services, demo.id, session_id, 2)  # history and proactive, back to waiting

    started = time.monotonic()
    await parley.services.operators.say(demo, session_id, "Hi, I'm Ana. Let me check that.",
                                        operator_name="Ana")
    reply = v.widget(".msg.operator").last
    await expect(reply).to_contain_text("Let me check that", timeout=2_000)
    assert time.monotonic() - started < 5  # at once, really; loose for a loaded machine
    await expect(reply.locator(".by")).to_have_text("Ana")
    await expect(v.widget(".mode")).to_have_text("You are chatting with Ana")

    hostile = "<img src=x onerror=alert(1)>"
    await parley.services.operators.say(demo, session_id, hostile, operator_name="Ana")
    await expect(v.widget(".msg.operator").last).to_contain_text(hostile, timeout=2_000)
    await expect(v.widget(".msg img")).to_have_count(0)  # no element, so no onerror can ever fire
    assert v.dialogs == []
    await v.screenshot("operator")

    await parley.services.operators.set_mode(demo, session_id, "operator")  # taken over
    await parley.services.operators.say(demo, session_id, "I'll stay with you.", operator_name="Ana")
    await expect(v.widget(".msg.operator").last).to_contain_text("I'll stay with you.", timeout=3_000)
    await expect(v.widget(".mode")).to_have_text("You are chatting with Ana")
    await until_held(parley.services, demo.id, session_id, 2)
    await parley.services.operators.set_mode(demo, session_id, "ai")  # handed back
    await expect(v.widget(".mode")).to_have_text("AI assistant", timeout=3_000)
    await v.page.reload()
    await v.widget(".launcher").wait_for()
    if not await v.widget(".panel").is_visible():
        await v.open_chat()
    await expect(v.widget(".msg.operator")).to_have_count(3)
    await expect(v.widget(".mode")).to_have_text("AI assistant")  # the mode says it, not the last speaker
    assert v.unexpected_errors() == []


async def test_proactive_message_opens_a_bubble_beside_the_launcher(
        parley: Parley, demo: Site, browser: Browser) -> None:
    v = await visit(browser, demo_url(parley))
    session_id = await v.session_id()
    await until_held(parley.services, demo.id, session_id)
    await parley.services.operators.send_proactive(demo, session_id, "Need a hand choosing a size?")
    nudge = v.widget(".nudge")
    await expect(nudge).to_be_visible(timeout=3_000)
    await expect(nudge).to_contain_text("Need a hand choosing a size?")
    await v.screenshot("proactive")
    await nudge.locator(".text").click()
    await expect(v.widget(".panel")).to_be_visible()
    await expect(v.widget(".log")).to_contain_text("Need a hand choosing a size?")
    await expect(nudge).to_be_hidden()
    assert v.unexpected_errors() == []


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (120, 80), (31, 111, 235)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_image_upload_with_preview_and_a_size_check(parley: Parley, demo: Site,
                                                         browser: Browser, tmp_path: Path) -> None:
    v = await visit(browser, demo_url(parley))
    await v.open_chat()
    await v.ask("Do you ship to Canada?")  # a long answer: the log scrolls
    await expect(v.widget(".msg.bot .src").last).to_be_visible(timeout=10_000)
    image = tmp_path / "boots.png"
    image.write_bytes(png_bytes())
    await v.widget("input[type=file]").set_input_files(str(image))
    await expect(v.widget(".preview img")).to_be_visible()
    await v.screenshot("upload-preview")
    await v.widget(".preview .btn").first.click()
    sent = v.widget(".msg.visitor.image img")
    await expect(sent).to_have_count(1, timeout=5_000)
    await expect(v.widget(".preview")).to_be_hidden()
    src = await sent.get_attribute("src") or ""
    assert src.startswith(f"{parley.base_url}/uploads/")
    await v.page.wait_for_function("img => img.complete && img.naturalWidth === 120",
                                   arg=await sent.element_handle())  # the picture really loads
    # Shown whole once loaded, not cut off by the height it gained after the scroll.
    await v.page.wait_for_function("log => log.scrollHeight > log.clientHeight"
                                   " && log.scrollTop + log.clientHeight >= log.scrollHeight - 2",
                                   arg=await v.widget(".log").element_handle(), timeout=5_000)

    # A dropped 6 MB image is refused before any upload, with a sentence saying why.
    await v.widget(".panel").evaluate("""panel => {
      const data = new DataTransfer();
      data.items.add(new File([new Uint8Array(6 * 1024 * 1024)], 'huge.png', {type: 'image/png'}));
      panel.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
    }""")
    await expect(v.widget(".notice")).to_contain_text("larger than 5 MB")
    await expect(v.widget(".preview")).to_be_hidden()

    await v.page.reload()
    await v.widget(".launcher").wait_for()
    await expect(v.widget(".msg.visitor.image img")).to_have_count(1)
    await v.screenshot("upload")
    assert v.unexpected_errors() == []


async def test_rating_five_with_a_comment_when_the_visitor_ends_the_chat(
        parley: Parley, demo: Site, browser: Browser) -> None:
    v = await visit(browser, demo_url(parley))
    await v.open_chat()
    await v.ask("Do you ship to Canada?")
    await expect(v.widget(".msg.bot .src").last).to_be_visible(timeout=10_000)
    await v.widget("header .end").click()
    # The question has the focus, not a score that Enter would give.
    await expect(v.widget(".card.rate h3")).to_be_focused()
    await v.page.keyboard.press("Tab")
    await expect(v.widget(".card.rate button[aria-label='1 out of 5']")).to_be_focused()
    await v.widget(".card.rate button[aria-label='5 out of 5']").click()
    await v.widget(".card.rate textarea").fill("Quick and clear, thanks!")
    await v.screenshot("rating")
    await v.widget(".card.rate button[type=submit]").click()
    await expect(v.widget(".card.rate")).to_contain_text("Thank you for your feedback!")
    conversation = await parley.services.store.get_conversation(demo.id, await v.session_id())
    assert conversation is not None
    assert (conversation.rating, conversation.rating_comment) == (5, "Quick and clear, thanks!")
    assert v.unexpected_errors() == []


async def test_blocked_visitor_sees_why_and_cannot_type(parley: Parley, demo: Site,
                                                       browser: Browser) -> None:
    v = await visit(browser, demo_url(parley))
    await v.open_chat()
    session_id = await v.session_id()
    # Blocked by an operator while the page is open: the held request brings it within a second.
    await parley.services.operators.block(demo, "session", session_id, session_id=session_id)
    await expect(v.widget(".blocked")).to_have_text("You can no longer send messages in this chat.",
                                                    timeout=2000)
    await expect(v.widget("textarea")).to_be_disabled()
    await v.screenshot("blocked")
    await parley.services.operators.unblock(demo, "session", session_id, session_id=session_id)
    await expect(v.widget("textarea")).to_be_enabled(timeout=2000)

    # A block nobody announced (by IP): the next message gets 403 `blocked`.
    await parley.services.operators.block(demo, "ip", "127.0.0.1")
    await v.ask("Hello?")
    await expect(v.widget(".blocked")).to_have_text("You can no longer send messages in this chat.")
    await expect(v.widget("textarea")).to_be_disabled()

    # And after a reload the widget learns it from block-status before anything is typed.
    await v.page.reload()
    await v.widget(".launcher").wait_for()
    if not await v.widget(".panel").is_visible():
        await v.open_chat()
    await expect(v.widget(".blocked")).to_be_visible()
    await expect(v.widget("textarea")).to_be_disabled()
    # The refused POST is the only thing chromium complains about.
    assert v.unexpected_errors(allowed=r"status of 403") == []


async def test_a_hostile_host_page_on_another_origin_does_not_break_it(
        parley: Parley, browser: Browser, host_page: str) -> None:
    v = await visit(browser, host_page)
    launcher = v.widget(".launcher")
    await expect(launcher).to_be_visible()
    box = await launcher.bounding_box()
    assert box is not None and 50 <= box["width"] <= 70 and box["height"] == box["width"]
    await v.open_chat()
    panel = await v.widget(".panel").bounding_box()
    assert panel is not None and panel["width"] >= 300 and panel["height"] >= 400
    await v.ask("Do you ship to Canada?")  # cross-origin: CORS lets the stream through
    await expect(v.widget(".msg.bot .src").last).to_be_visible(timeout=10_000)
    # Styled although the page's CSP refuses inline styles, and left-to-right on a right-to-left page.
    font = await v.widget(".msg.bot").last.evaluate("el => getComputedStyle(el).fontSize")
    assert font == "15px"
    assert await v.widget(".root").evaluate("el => getComputedStyle(el).direction") == "ltr"
    await v.screenshot("hostile-host")
    assert v.unexpected_errors() == []


async def reopened(v: Visit) -> None:
    """After a reload: the panel as the visitor left it (open), opened if it is not."""
    await v.widget(".launcher").wait_for()
    if not await v.widget(".panel").is_visible():
        await v.open_chat()


async def test_handoff_asks_for_email_and_the_contact_form_saves(parley: Parley, demo: Site,
                                                                browser: Browser) -> None:
    v = await visit(browser, demo_url(parley))
    await v.open_chat()
    await v.ask("I want to talk to a human")
    card = v.widget(".card.email")
    await expect(card).to_be_visible(timeout=10_000)
    await v.page.reload()  # the ask survives a reload until there is an email
    await reopened(v)
    await expect(card).to_be_visible(timeout=10_000)
    await card.locator("input").fill("jane@Example.COM")
    await card.locator("button").click()
    await expect(card).to_contain_text("We will reply to jane@Example.COM")
    await v.page.reload()
    await reopened(v)
    await expect(v.widget(".msg.bot").last).to_be_visible(timeout=10_000)
    await expect(card).to_have_count(0)  # an email is known: nothing more to ask

    await v.widget("header button[aria-label='Contact details']").click()
    form = v.widget(".card.contact")
    await form.get_by_label("Name").fill("Jane")
    await form.get_by_label("Phone").fill("12")
    await form.locator("button[type=submit]").click()
    await expect(form.locator(".err")).to_have_text(
        "Please give the phone number with its country code, like +1 555 123 4567.")
    await form.get_by_label("Phone").fill("+1 555 123 4567")
    await v.screenshot("contact")
    await form.locator("button[type=submit]").click()
    await expect(form).to_contain_text("we will be in touch")
    conversation = await parley.services.store.get_conversation(demo.id, await v.session_id())
    assert conversation is not None
    assert (conversation.email, conversation.phone, conversation.contact_name) == \
        ("jane@example.com", "+15551234567", "Jane")
    assert v.unexpected_errors() == []


async def test_french_visitor_on_a_phone_gets_a_full_screen_french_widget(
        parley: Parley, demo: Site, browser: Browser) -> None:
    v = await visit(browser, demo_url(parley), locale="fr-FR",
                    viewport={"width": 390, "height": 780}, is_mobile=True, has_touch=True)
    await v.widget(".launcher").wait_for()
    await expect(v.widget(".launcher")).to_have_attribute("aria-label", "Ouvrir la discussion")
    await v.widget(".launcher").focus()
    await v.page.keyboard.press("Enter")  # keyboard operable
    await expect(v.widget(".panel")).to_be_visible()
    await expect(v.widget("textarea")).to_be_focused()
    await expect(v.widget("textarea")).to_have_attribute("placeholder", "Écrivez votre message…")
    box = await v.widget(".panel").bounding_box()
    assert box is not None and (box["width"], box["height"]) == (390, 780)
    await v.screenshot("phone-fr")
    await v.page.keyboard.press("Escape")
    await expect(v.widget(".panel")).to_be_hidden()
    await expect(v.widget(".launcher")).to_be_focused()
    assert v.unexpected_errors() == []
