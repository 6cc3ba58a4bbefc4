"""Headers on every response, whichever handler (or Tornado's own error page) wrote it."""

from __future__ import annotations

from tornado import httputil
from tornado.web import OutputTransform

# For HTML we did not write a policy for (error pages): nothing runs, nothing loads, no framing.
STRICT_HTML_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


class SecurityHeaders(OutputTransform):
    """No version in `Server`; never sniffed; HTML is never framed and has a CSP."""

    def transform_first_chunk(self, status_code: int, headers: httputil.HTTPHeaders, chunk: bytes,
                              finishing: bool) -> tuple[int, httputil.HTTPHeaders, bytes]:
        headers["Server"] = "Parley"
        headers.setdefault("X-Content-Type-Options", "nosniff")
        if headers.get("Content-Type", "").startswith("text/html"):
            headers.setdefault("Content-Security-Policy", STRICT_HTML_POLICY)
            headers.setdefault("X-Frame-Options", "DENY")
            headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        return status_code, headers, chunk
