"""Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, LiteLLM, OpenRouter ...).

Streamed with httpx + httpx-sse: decoding an event costs a few microseconds of CPU, a tenth of the
`openai` SDK's cost, which builds a pydantic object per chunk.

Failure rules:
- the first token arrives within one overall deadline (`deadline`, 20 s by default) across every
  attempt and backoff, or the visitor gets an error at once (and is offered a person);
- before the first token, a transient failure (connect error, timeout, 5xx/429, an error event,
  a stream cut short) is retried with exponential backoff and jitter, a bounded number of times;
- after the first token nothing is retried (the visitor already reads the answer): the failure
  is raised as AIUnavailable, which the chat service turns into an `error` event and `done`;
- a stream that ends without `finish_reason` or `[DONE]` is a failure, not a short answer.
Closing the generator (the visitor left, the producer task was cancelled) closes the response, so
the upstream sees its connection close and stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, AsyncIterator

import httpx
import httpx_sse
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from server.ai.base import AIUnavailable, AnswerRequest, Provider, Usage
from server.ai.prompt import build_messages
from server.ai.settings import ModelConfig

log = logging.getLogger(__name__)

UNAVAILABLE = "The assistant is unavailable right now; please try again in a moment."
INTERRUPTED = "The answer was interrupted; please try again."
TOO_SLOW = "The assistant is taking too long to answer. Someone from the team can reply instead."
TOO_LONG = "The assistant's answer ran too long and was cut. Someone from the team can reply instead."
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
ERROR_BODY_CHARS = 300
# After `[DONE]`, what is left of the body (normally only its end) is read, so the connection goes
# back to the pool for the next answer instead of being closed: a new connection costs the first
# chunk a TCP handshake (over 1 ms on loopback) and both sides CPU. Bounded: an upstream that keeps
# talking after `[DONE]` is cut.
DRAIN_SECONDS = 0.5
DRAIN_EVENTS = 16
# Past this an answer is cut like one that stalls (kept, marked interrupted, a person offered): an
# upstream that never stops must not fill the database. About 5,000 tokens; max_tokens bounds a
# well-behaved model long before.
MAX_ANSWER_CHARS = 20_000


class _Transient(AIUnavailable):
    """A failure worth another attempt, as long as no token has reached the visitor."""


class IdleDeadline:
    """Raises TimeoutError in the task inside it once `seconds` pass without a `touch()`.

    One timer for the whole stream, re-armed only when it fires early: `asyncio.timeout` around
    each chunk costs a timer handle and a context per chunk, thousands a second when many answers
    stream. Like `asyncio.timeout`, a cancellation from elsewhere stays a cancellation. While
    `paused` (a generator suspended at a yield) it never fires: the task is then the consumer's.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self.paused = False
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def touch(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        if self.paused:
            self.touch()
        due = self._last + self.seconds
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self._timer = None
        self.expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aenter__(self) -> IdleDeadline:
        self._task = asyncio.current_task()
        self.touch()
        self._timer = self._loop.call_at(self._last + self.seconds, self._check)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        assert self._task is not None
        if self.expired and exc_type is asyncio.CancelledError and self._task.uncancel() == 0:
            raise TimeoutError from exc


class OpenAICompatible(Provider):
    name = "openai"

    def __init__(self, config: ModelConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        # The same for every request (the config is frozen): made once, not per question.
        self.headers = self._headers()
        self.timeout = self._timeout()

    # -- request ------------------------------------------------------------------------------
    def payload(self, request: AnswerRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": build_messages(request, self.config.system_prompt),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        if self.config.max_tokens is not None:
            body["max_tokens"] = self.config.max_tokens
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _timeout(self) -> httpx.Timeout:
        # The asyncio deadlines below are the real first-token and between-token limits; httpx's
        # read timeout is only a backstop above both.
        backstop = max(self.config.first_token_timeout, self.config.idle_timeout) + 1.0
        return httpx.Timeout(backstop, connect=self.config.connect_timeout)

    def _scrub(self, text: str) -> str:
        """Upstream error bodies sometimes echo the key back; never let it reach a log."""
        key = self.config.api_key
        return text.replace(key, "***") if key else text

    def _log_failure(self, what: str, detail: str = "") -> None:
        log.warning("model %s at %s: %s %s", self.config.model, self.config.base_url, what,
                    self._scrub(detail)[:ERROR_BODY_CHARS])

    # -- stream -------------------------------------------------------------------------------
    async def stream(self, request: AnswerRequest) -> AsyncIterator[str | Usage]:
        payload = self.payload(request)
        async with contextlib.AsyncExitStack() as stack:
            items, first = await self._start(payload, stack)
            yield first
            loop = asyncio.get_running_loop()
            cut_at = loop.time() + self.config.max_answer_seconds
            length = len(first)
            try:
                async with IdleDeadline(self.config.idle_timeout) as idle:
                    async for item in items:
                        idle.touch()
                        if isinstance(item, str):
                            length += len(item)
                            if length > MAX_ANSWER_CHARS or loop.time() > cut_at:
                                self._log_failure(f"answer cut after {length} characters: it did not end "
                                                  f"within {MAX_ANSWER_CHARS} or "
                                                  f"{self.config.max_answer_seconds:g} s")
                                raise AIUnavailable(TOO_LONG)
                        idle.paused = True  # the consumer's time between chunks is not silence
                        yield item
                        idle.paused = False
            except TimeoutError:
                self._log_failure(f"no token for {self.config.idle_timeout:g} s")
                raise AIUnavailable(INTERRUPTED) from None
            except _Transient as exc:  # after the first token nothing is retried
                raise AIUnavailable(INTERRUPTED) from exc
            except (httpx.HTTPError, httpx_sse.SSEError) as exc:
                self._log_failure("stream broke:", repr(exc))
                raise AIUnavailable(INTERRUPTED) from exc

    async def _start(self, payload: dict[str, Any],
                     outer: contextlib.AsyncExitStack) -> tuple[AsyncIterator[str | Usage], str]:
        """Open the stream and read up to the first token, retrying transient failures."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, self.config.attempts)),
            wait=wait_exponential_jitter(multiplier=self.config.backoff, max=self.config.backoff * 16,
                                         jitter=self.config.backoff),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            async with asyncio.timeout(self.config.deadline):
                return await self._first_token(retrying, payload, outer)
        except TimeoutError:
            self._log_failure(f"no first token within the {self.config.deadline:g} s deadline")
            raise AIUnavailable(TOO_SLOW) from None

    async def _first_token(self, retrying: AsyncRetrying, payload: dict[str, Any],
                           outer: contextlib.AsyncExitStack) -> tuple[AsyncIterator[str | Usage], str]:
        async for attempt in retrying:
            with attempt:
                stack = contextlib.AsyncExitStack()
                try:
                    items, first = await self._attempt(payload, stack)
                except BaseException:
                    await stack.aclose()
                    raise
                outer.push_async_exit(stack)
                return items, first
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def _attempt(self, payload: dict[str, Any],
                       stack: contextlib.AsyncExitStack) -> tuple[AsyncIterator[str | Usage], str]:
        try:
            async with asyncio.timeout(self.config.first_token_timeout):
                source = await stack.enter_async_context(httpx_sse.aconnect_sse(
                    self.client, "POST", self.url, json=payload, headers=dict(self.headers),
                    timeout=self.timeout))
                await self._check_status(source.response)
                items = self._items(source.aiter_sse())
                stack.push_async_callback(items.aclose)
                async for item in items:
                    if isinstance(item, str) and item:
                        return items, item
        except TimeoutError:
            self._log_failure(f"no first token within {self.config.first_token_timeout:g} s")
            raise _Transient(UNAVAILABLE) from None
        except httpx.HTTPError as exc:
            self._log_failure("request failed:", repr(exc))
            raise _Transient(UNAVAILABLE) from exc
        except httpx_sse.SSEError as exc:  # not an event stream: a wrong base URL, most likely
            self._log_failure("not an event stream:", str(exc))
            raise AIUnavailable(UNAVAILABLE) from exc
        self._log_failure("finished without any text")
        raise AIUnavailable(UNAVAILABLE)

    async def _check_status(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        body = (await response.aread()).decode("utf-8", "replace")
        self._log_failure(f"HTTP {response.status_code}:", body)
        if response.status_code in RETRYABLE_STATUS:
            raise _Transient(UNAVAILABLE)
        raise AIUnavailable(UNAVAILABLE)  # 400/401/403/404: configuration, not luck

    async def _items(self, events: AsyncIterator[httpx_sse.ServerSentEvent]) -> AsyncIterator[str | Usage]:
        """Content deltas and the usage report of one response; raise on any sign of failure."""
        finished = False
        async for event in events:
            data = event.data.strip()
            if data == "[DONE]":
                await _drain(events)
                return
            try:
                chunk = json.loads(data) if data else {}
            except ValueError:
                self._log_failure("undecodable event:", data)
                raise _Transient(UNAVAILABLE) from None
            if event.event == "error" or not isinstance(chunk, dict) or "error" in chunk:
                detail = chunk.get("error") if isinstance(chunk, dict) else chunk
                self._log_failure("error event:", json.dumps(detail)[:ERROR_BODY_CHARS])
                raise _Transient(UNAVAILABLE)
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                yield Usage(usage)
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str) and content:
                    yield content
                if choice.get("finish_reason"):
                    finished = True
        if not finished:
            self._log_failure("stream ended without finish_reason or [DONE]")
            raise _Transient(UNAVAILABLE)


async def _drain(events: AsyncIterator[httpx_sse.ServerSentEvent]) -> None:
    """Read the rest of a finished response (see DRAIN_SECONDS); any failure just loses the reuse."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError, httpx_sse.SSEError):
        async with asyncio.timeout(DRAIN_SECONDS):
            for _ in range(DRAIN_EVENTS):
                if await anext(events, None) is None:
                    return
