"""Checks of visitor input. Every check raises InvalidRequest with a sentence a developer can act on."""

from __future__ import annotations

import re
from typing import Any

from server.errors import InvalidRequest

SITE_KEY_RE = re.compile(r"^sk_[A-Za-z0-9_-]{24,128}$")
SESSION_ID_RE = re.compile(r"^sess_[A-Za-z0-9_-]{16,64}$")
MESSAGE_ID_RE = re.compile(r"^m_[A-Za-z0-9_-]{1,64}$")
LANG_RE = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8}){0,4}$")
# What a value of each format looks like, for the error that refuses one.
_ID_CHARS = "letters, digits, '-' or '_'"
FORMATS = {
    SITE_KEY_RE: f"'sk_' then 24 to 128 {_ID_CHARS}",
    SESSION_ID_RE: f"'sess_' then 16 to 64 {_ID_CHARS}",
    MESSAGE_ID_RE: f"'m_' then 1 to 64 {_ID_CHARS}",
    LANG_RE: "a language tag such as 'en' or 'pt-BR'",
}
# Characters that show nothing (besides spaces): controls, the soft hyphen, zero-width and
# direction marks, invisible operators, variation selectors, the Hangul fillers, the blank braille
# cell, tags. A message of only these is empty to whoever reads it.
_INVISIBLE = (r"\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u180e\u200b-\u200f\u202a-\u202e"
              r"\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U000e0000-\U000e007f")
# No spaces or invisible characters, nor those that end an address in mail headers and HTML
# (<>"(),;:[] and backslash): operators see what is stored.
_EMAIL_CHAR = rf"[^@\s{_INVISIBLE}<>\"(),;:\[\]\\]"
EMAIL_RE = re.compile(rf"^{_EMAIL_CHAR}{{1,64}}@{_EMAIL_CHAR}+\.{_EMAIL_CHAR}{{2,}}$")

INTEGER_RE = re.compile(r"^-?[0-9]{1,30}$")
NUMBER_RE = re.compile(r"^-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?$")

MAX_URL_LENGTH = 2048
INVISIBLE_RE = re.compile(rf"[\s{_INVISIBLE}]+")


def string_field(
    data: dict[str, Any],
    name: str,
    *,
    required: bool = True,
    max_length: int = 4000,
    pattern: re.Pattern[str] | None = None,
    strip: bool = True,
) -> str | None:
    """Return `data[name]` as a checked string, or None when it is optional and absent."""
    value = data.get(name)
    if value is None or (value == "" and not required):
        if required:
            raise InvalidRequest(f"'{name}' is required.")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string.")
    if strip:
        value = value.strip()
        if required and value and INVISIBLE_RE.fullmatch(value):
            raise InvalidRequest(f"'{name}' must not be empty: it has no visible characters.")
    if required and not value:
        raise InvalidRequest(f"'{name}' must not be empty.")
    if "\x00" in value:
        raise InvalidRequest(f"'{name}' must not contain NUL characters.")
    if len(value) > max_length:
        raise InvalidRequest(f"'{name}' is longer than {max_length} characters.")
    if pattern is not None and value and not pattern.match(value):
        looks_like = FORMATS.get(pattern)
        raise InvalidRequest(f"'{name}' is not in the expected format"
                             + (f": {looks_like}." if looks_like else "."))
    return value or None


def site_key(data: dict[str, Any]) -> str:
    return string_field(data, "site_key", max_length=140, pattern=SITE_KEY_RE)  # type: ignore[return-value]


def session_id(data: dict[str, Any]) -> str:
    return string_field(data, "session_id", max_length=80, pattern=SESSION_ID_RE)  # type: ignore[return-value]


def int_field(
    data: dict[str, Any], name: str, *, minimum: int, maximum: int, required: bool = True
) -> int | None:
    """An integer given as a JSON number (bool and float are refused)."""
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"'{name}' is required.")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer.")
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"'{name}' must be between {minimum} and {maximum}.")
    return value


def query_int(raw: str | None, name: str, *, minimum: int, maximum: int) -> int | None:
    """An integer from a query string, or None when absent."""
    if raw is None or raw == "":
        return None
    if not INTEGER_RE.match(raw):  # int() would also take " 7", "1_0" and other scripts' digits
        raise InvalidRequest(f"'{name}' must be an integer.")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"'{name}' must be between {minimum} and {maximum}.")
    return value


def query_seconds(raw: str | None, name: str, *, maximum: float) -> float:
    """A wait in seconds from a query string; 0 when absent."""
    if raw is None or raw == "":
        return 0.0
    if not NUMBER_RE.match(raw):  # float() would also take "nan", " 5" and "1_0"
        raise InvalidRequest(f"'{name}' must be a number of seconds.")
    value = float(raw)
    if not 0 <= value <= maximum or value != value:
        raise InvalidRequest(f"'{name}' must be between 0 and {maximum:g} seconds.")
    return value


def normalise_email(raw: str) -> str:
    """Syntax check only; the domain is lower-cased, the local part kept as typed."""
    if len(raw) > 254 or not EMAIL_RE.match(raw):
        raise InvalidRequest("'email' is not a valid email address.")
    local, _, domain = raw.rpartition("@")
    return f"{local}@{domain.lower()}"


def normalise_phone(raw: str) -> str:
    """E.164-like: a leading '+' and 7 to 15 digits; spaces and dashes are dropped."""
    compact = re.sub(r"[\s-]", "", raw)
    if not re.fullmatch(r"\+[0-9]{7,15}", compact):
        raise InvalidRequest("'phone' must look like +15551234567 (a '+' and 7 to 15 digits).")
    return compact
