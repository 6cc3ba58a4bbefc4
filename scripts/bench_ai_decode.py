#!/usr/bin/env python3
"""CPU cost of decoding an OpenAI-style chat-completions SSE stream with httpx + httpx-sse.

Three measurements, each in CPU microseconds per chunk (time.process_time, best of --repeat runs):
  sse       httpx-sse event parsing only, from an in-memory byte stream (one network read per event);
  provider  the same bytes through Parley's own decoder (OpenAICompatible._items: JSON, delta,
            finish_reason and usage checks), i.e. the provider's hot path without a socket;
  loopback  OpenAICompatible.stream end to end against tests/fake_openai.py over 127.0.0.1; the
            fake server runs in the same process, so this includes its Tornado cost too.
Run: .venv/bin/python scripts/bench_ai_decode.py [--chunks 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import httpx_sse  # noqa: E402

from server.ai.base import AnswerRequest, Usage  # noqa: E402
from server.ai.openai_compat import OpenAICompatible  # noqa: E402
from server.ai.settings import ModelConfig  # noqa: E402
from server.store.models import Site  # noqa: E402


def sse_bytes(chunks: int) -> list[bytes]:
    """One `data:` event per token, as OpenAI sends them, then finish, usage and [DONE]."""
    events = []
    for n in range(chunks):
        payload = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764000000,
                   "model": "gpt-4o-mini", "system_fingerprint": "fp_bench",
                   "choices": [{"index": 0, "delta": {"content": f" tok{n % 97}"}, "logprobs": None,
                                "finish_reason": None}]}
        events.append(b"data: " + json.dumps(payload).encode() + b"\n\n")
    finish = {"id": "chatcmpl-bench", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {"id": "chatcmpl-bench", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": chunks,
                                                               "total_tokens": chunks + 1}}
    events += [b"data: " + json.dumps(finish).encode() + b"\n\n",
               b"data: " + json.dumps(usage).encode() + b"\n\n", b"data: [DONE]\n\n"]
    return events


class Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def response(pieces: list[bytes]) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Pieces(pieces))


async def run_sse(pieces: list[bytes]) -> int:
    count = 0
    async for _ in httpx_sse.EventSource(response(pieces)).aiter_sse():
        count += 1
    return count


async def run_provider(provider: OpenAICompatible, pieces: list[bytes]) -> int:
    count = 0
    async for item in provider._items(httpx_sse.EventSource(response(pieces)).aiter_sse()):
        if not isinstance(item, Usage):
            count += 1
    return count


async def cpu_per_chunk(run, chunks: int, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        await run()
        best = min(best, time.process_time() - started)
    return best / chunks * 1e6


async def loopback(chunks: int, repeat: int) -> float:
    from tests.fake_openai import FakeOpenAI, Plan

    fake = FakeOpenAI()
    fake.default = Plan(tokens=[f" tok{n % 97}" for n in range(chunks)])
    await fake.start()
    client = httpx.AsyncClient()
    provider = OpenAICompatible(ModelConfig(base_url=fake.base_url, model="bench"), client)
    site = Site(1, "sk_bench", "Bench", [], {}, True, "")
    request = AnswerRequest(site=site, question="hi", lang="en", history=[], passages=[])

    async def run() -> None:
        async for _ in provider.stream(request):
            pass

    try:
        return await cpu_per_chunk(run, chunks, repeat)
    finally:
        await client.aclose()
        await fake.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=20_000, help="chunks per stream (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best counts")
    parser.add_argument("--loopback-chunks", type=int, default=2_000,
                        help="chunks for the loopback run (default 2000)")
    args = parser.parse_args()
    pieces = sse_bytes(args.chunks)
    provider = OpenAICompatible(ModelConfig(base_url="http://unused/v1", model="bench"),
                                httpx.AsyncClient())
    print(f"python {sys.version.split()[0]}, httpx {httpx.__version__}, "
          f"{args.chunks} chunks of ~{sum(map(len, pieces)) // len(pieces)} bytes, best of {args.repeat}")
    sse = await cpu_per_chunk(lambda: run_sse(pieces), args.chunks, args.repeat)
    print(f"sse       {sse:7.2f} µs CPU per chunk  (httpx-sse parsing only)")
    full = await cpu_per_chunk(lambda: run_provider(provider, pieces), args.chunks, args.repeat)
    print(f"provider  {full:7.2f} µs CPU per chunk  (httpx-sse + JSON + delta/finish/usage checks)")
    await provider.client.aclose()
    wire = await loopback(args.loopback_chunks, args.repeat)
    print(f"loopback  {wire:7.2f} µs CPU per chunk  (provider over 127.0.0.1 incl. the in-process fake "
          f"server's Tornado cost, {args.loopback_chunks} chunks)")


if __name__ == "__main__":
    asyncio.run(main())
