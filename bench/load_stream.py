"""The clients of the streaming benchmark, in their own process: C workers, each POSTing one
question at a time and reading the SSE answer to its end, until the time is up.

Raw HTTP/1.1 over asyncio, one connection per answer (as a widget makes), from source addresses
spread over 127.0.0.0/16. Per answer it records the time from the request to the first content
event, and the gaps between network reads that carried content; it never parses JSON, so the
client stays cheap next to the servers it measures. Prints one JSON result."""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import resource
import time
from typing import Any

from bench.common import loopback_addresses, raise_open_file_limit, summary_ms

# Content and end markers of the two kinds of stream: Parley's own events, and OpenAI's chunks
# (the fake writes `"content": " tok1"`, LiteLLM `"content":" tok1"`: both have `" tok`).
MARKERS = {
    "parley": (b'"type":"chunk"', b'"type":"done"', b'"type":"error"'),
    "openai": (b'" tok', b"[DONE]", b'"error"'),
}


class Streams:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.addresses = itertools.cycle(loopback_addresses(args.addresses))
        self.content, self.done, self.error = MARKERS[args.kind]
        self.first_chunk: list[float] = []
        self.gaps: list[float] = []
        self.chunks_per_answer: list[int] = []
        self.completed = 0
        self.chunks_received = 0  # every content event, finished answers or not
        self.failures: collections.Counter[str] = collections.Counter()
        self.numbers = itertools.count()
        self.last_completion = 0.0

    def request(self, n: int) -> bytes:
        if self.args.kind == "parley":
            body = json.dumps({"site_key": self.args.site_key, "session_id": f"sess_stream{n:016d}",
                               "message": "How long does shipping take?"})
            path, auth = "/api/v1/chat/stream", ""
        else:
            body = json.dumps({"model": "fake", "stream": True,
                               "messages": [{"role": "user", "content": "How long does shipping take?"}]})
            path = "/v1/chat/completions"
            auth = f"Authorization: Bearer {self.args.key}\r\n" if self.args.key else ""
        return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{auth}"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()

    async def one(self) -> None:
        n = next(self.numbers)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.args.port, local_addr=(next(self.addresses), 0), limit=1 << 20)
        try:
            started = time.perf_counter()
            writer.write(self.request(n))
            head = await reader.readuntil(b"\r\n\r\n")
            if head[9:12] != b"200":
                self.failures[f"HTTP {head[9:12].decode()}"] += 1
                return
            keep = len(self.content) - 1
            tail, last, chunks, finished = b"", 0.0, 0, False
            while not finished:
                data = await reader.read(65536)
                if not data:
                    break
                now = time.perf_counter()
                window = tail + data
                tail = window[-keep:]
                found = window.count(self.content)
                if found:
                    if chunks == 0:
                        self.first_chunk.append(now - started)
                    else:
                        self.gaps.append(now - last)
                    chunks += found
                    self.chunks_received += found
                    last = now
                if self.error in window:
                    self.failures["error event"] += 1
                    return
                finished = self.done in window
            if finished and chunks:
                self.completed += 1
                self.chunks_per_answer.append(chunks)
                self.last_completion = time.perf_counter()
            else:
                self.failures["cut short"] += 1
        finally:
            writer.close()

    async def worker(self, deadline: float) -> None:
        while time.perf_counter() < deadline:
            try:
                await asyncio.wait_for(self.one(), self.args.answer_timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                self.failures[type(exc).__name__] += 1
                await asyncio.sleep(0.1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=tuple(MARKERS), required=True)
    parser.add_argument("--site-key", default="")
    parser.add_argument("--key", default="", help="a bearer token (LiteLLM's master key)")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True, help="start answers for this long")
    parser.add_argument("--addresses", type=int, default=250)
    parser.add_argument("--answer-timeout", type=float, default=60)
    args = parser.parse_args()
    raise_open_file_limit()
    streams = Streams(args)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.gather(*(streams.worker(started + args.seconds) for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    result: dict[str, Any] = {
        "completed": streams.completed,
        "seconds": round(elapsed, 2),
        "answers_per_s": round(streams.completed / elapsed, 2) if elapsed else None,
        "chunks": streams.chunks_received,
        "chunks_per_s": round(streams.chunks_received / elapsed, 1) if elapsed else None,
        "first_chunk_ms": summary_ms(streams.first_chunk),
        "gap_ms": summary_ms(streams.gaps),
        "chunks_per_answer": round(sum(streams.chunks_per_answer) / max(1, len(streams.chunks_per_answer)), 1),
        "failures": dict(streams.failures),
        "client_cpu_s": round(used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime, 2),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
