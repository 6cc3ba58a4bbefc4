"""The model for the streaming benchmark: the test suite's fake OpenAI-compatible server
(tests/fake_openai.py) answering every request with TOKENS tokens, one every PACE seconds.

Prints {"port": ...} when ready."""

from __future__ import annotations

import argparse
import asyncio
import json

from tests.fake_openai import FakeOpenAI, Plan


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--pace", type=float, default=0.01, help="seconds before each token")
    args = parser.parse_args()
    fake = FakeOpenAI()
    fake.default = Plan(tokens=[f" tok{n}" for n in range(args.tokens)], delay=args.pace)
    # Relays open hundreds of connections at once: a test's backlog of 128 would drop their SYNs,
    # and the kernel's retries (1, 3, 7, 15 s) would show as seconds to the first chunk.
    await fake.start(backlog=8192)
    print(json.dumps({"port": fake.port}), flush=True)
    while True:  # the fake records every call for tests; a benchmark makes too many to keep
        await asyncio.sleep(1)
        fake.calls.clear()


if __name__ == "__main__":
    asyncio.run(main())
