"""Privacy: take email addresses, phone numbers and card-like numbers out of what a model sees.

Only the copy sent to the model is redacted; the stored conversation keeps what the visitor wrote.
The patterns prefer redacting too much over too little, except for ISO dates ("2024-01-15"),
which look like phone numbers but matter to many support questions.
"""

from __future__ import annotations

import re

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13 to 19 digits, optionally grouped by spaces or dashes: every card number length in use.
CARD_RE = re.compile(r"(?<![\w+])\d(?:[ -]?\d){12,18}(?!\w)")
# 7 to 15 digits (E.164), optionally with +, spaces, dots, dashes and parentheses.
PHONE_RE = re.compile(r"(?<![\w+])\+?\(?\d(?:[\s.()-]{0,2}\d){6,14}(?!\w)")
ISO_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")

EMAIL, PHONE, CARD = "[email]", "[phone]", "[card number]"


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    return text if ISO_DATE_RE.fullmatch(text.strip()) else PHONE


def redact(text: str) -> str:
    """`text` with emails, card-like numbers and phone numbers replaced by placeholders."""
    if not text:
        return text
    text = EMAIL_RE.sub(EMAIL, text)
    text = CARD_RE.sub(CARD, text)
    return PHONE_RE.sub(_phone, text)
