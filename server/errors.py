"""Errors that reach a visitor, each with the status and code of the contract's error table."""

from __future__ import annotations


class ParleyError(Exception):
    """An error with a human sentence, a machine code and an HTTP status."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidRequest(ParleyError):
    status, code = 400, "invalid_request"


class Blocked(ParleyError):
    status, code = 403, "blocked"


class OriginNotAllowed(ParleyError):
    status, code = 403, "origin_not_allowed"


class UnknownSite(ParleyError):
    status, code = 404, "unknown_site"


class UnknownConversation(ParleyError):
    status, code = 404, "unknown_conversation"


class Conflict(ParleyError):
    status, code = 409, "conflict"


class TooLarge(ParleyError):
    status, code = 413, "too_large"


class UnsupportedMediaType(ParleyError):
    status, code = 415, "unsupported_media_type"


class Restarting(ParleyError):
    """This process is shutting down; the same request succeeds on another (the widget retries)."""

    status, code = 503, "restarting"


class RateLimited(ParleyError):
    status, code = 429, "rate_limited"


class Unavailable(ParleyError):
    status, code = 503, "unavailable"


class Unauthorized(ParleyError):
    """Not signed in to the dashboard (or the session ended)."""
    status, code = 401, "unauthorized"


class Forbidden(ParleyError):
    """Signed in, but this operator may not do that (e.g. an agent managing accounts)."""
    status, code = 403, "forbidden"


class NotFound(ParleyError):
    """Nothing here for this operator: also what another site's conversation answers."""
    status, code = 404, "not_found"
