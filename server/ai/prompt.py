"""The prompt sent to a chat model: instructions, numbered passages, recent turns, the question.

Sizes are bounded in tokens, estimated as characters / 4 (close enough for English and the usual
tokenizers, and it needs no tokenizer download).
"""

from __future__ import annotations

from typing import Any

from server.ai.base import AnswerRequest, Passage
from server.store.models import Message

HANDOFF_MARKER = "[[HANDOFF]]"
PASSAGE_BUDGET_TOKENS = 1500
HISTORY_BUDGET_TOKENS = 1500

DEFAULT_SYSTEM_PROMPT = (
    "You are the assistant in the website chat of {site_name}. Answer the visitor's question from "
    "the numbered passages of the site's help pages given below, and from nothing else. If they "
    "do not answer the question, say \"I don't know\" plainly and offer to pass the visitor to a "
    "person from the team; do not answer from a passage about something else. Never invent "
    "prices, dates, policies or links. Be brief and friendly."
)
RULES = (
    "Answer in the visitor's language (BCP 47 tag: {lang}).\n"
    "If the visitor asks for a human, or you cannot help, end your answer with {marker} "
    "(it is removed before the visitor sees the answer)."
)

# With no passage for the question, a site set to hand such questions over already has.
HANDING_OVER = ("No passage answers this question, and a person from the team has already been asked "
                "to reply here: say you don't know, and that someone from the team will reply.")


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def fit_passages(passages: list[Passage], budget: int = PASSAGE_BUDGET_TOKENS) -> list[Passage]:
    """The best passages, in order, while they fit the budget (the first always fits)."""
    chosen: list[Passage] = []
    used = 0
    for passage in passages:
        cost = estimate_tokens(passage.text) + estimate_tokens(passage.source.title) + 8
        if chosen and used + cost > budget:
            break
        chosen.append(passage)
        used += cost
    return chosen


def _turn(message: Message) -> dict[str, str] | None:
    if not message.content.strip() or message.role == "system":
        return None
    if message.role == "visitor":
        return {"role": "user", "content": message.content}
    if message.role == "operator":
        name = message.operator_name or "Operator"
        return {"role": "assistant", "content": f"({name}, a person from the team): {message.content}"}
    return {"role": "assistant", "content": message.content}


def fit_history(history: list[Message], budget: int = HISTORY_BUDGET_TOKENS) -> list[dict[str, str]]:
    """The newest turns that fit the budget, oldest first."""
    turns: list[dict[str, str]] = []
    used = 0
    for message in reversed(history):
        turn = _turn(message)
        if turn is None:
            continue
        used += estimate_tokens(turn["content"]) + 4
        if used > budget:
            break
        turns.append(turn)
    turns.reverse()
    return turns


def format_passages(passages: list[Passage]) -> str:
    blocks = []
    for number, passage in enumerate(passages, 1):
        where = f" ({passage.source.url})" if passage.source.url else ""
        blocks.append(f"[{number}] {passage.source.title}{where}\n{passage.text.strip()}")
    return "\n\n".join(blocks) if blocks else "(no passage of the help pages matches this question)"


def build_messages(request: AnswerRequest, system_prompt: str | None) -> list[dict[str, Any]]:
    """Chat-completions `messages` for the request; every passage in `request` is included."""
    instructions = (system_prompt or DEFAULT_SYSTEM_PROMPT).replace("{site_name}", request.site.name)
    system = "\n\n".join([
        instructions,
        RULES.format(lang=request.lang, marker=HANDOFF_MARKER),
        *([HANDING_OVER] if request.handing_over else []),
        "Passages from the help pages:\n\n" + format_passages(request.passages),
    ])
    question = request.question
    if request.page_title or request.page_url:
        page = " ".join(p for p in (request.page_title, request.page_url and f"<{request.page_url}>") if p)
        question = f"{question}\n\n(The visitor is on the page: {page})"
    return [
        {"role": "system", "content": system},
        *fit_history(request.history),
        {"role": "user", "content": question},
    ]
