"""scripts/bench: Parley's benchmarks, each beside the ceiling of a minimal Tornado server doing only
the same I/O (and, for streaming, the LiteLLM proxy), in one run on one machine.

  held     N visitors holding operator-messages?wait=30: memory per held request, delay from an
           operator's write to the visitor at 100 and 1,000 messages/s, in and across processes
  stream   C concurrent POST /api/v1/chat/stream relaying a paced fake model: time to first chunk,
           gaps, answers/s, CPU per answer, peak RSS; upstream direct, Tornado relay, Parley, LiteLLM
  store    messages appended and history reads per second, 1 and 50 concurrent writers
  inbox    the dashboard's inbox on 100,000 conversations: first page, filters, full-text search
  fanout   50 operator tabs on the dashboard's live feed while 1,000 visitors chat: delay from a
           visitor message being stored to each tab receiving it, beside a minimal Tornado fan-out
  all      all of the above

Every server and every load generator is its own process; all traffic stays on 127.0.0.0/8.
Prints Markdown tables and writes JSON (default test-output/bench/<name>.json). Numbers only: a
benchmark asserts nothing. On a shared machine, compare the rows of one run, not runs to each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, machine, raise_open_file_limit

NAMES = ("held", "stream", "store", "inbox", "fanout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=(*NAMES, "all"), help="which benchmark to run")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and short phases: about a minute per benchmark")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="write the results here (default test-output/bench/<name>.json)")
    parser.add_argument("--held", type=int, nargs="+", metavar="N",
                        help="held: numbers of held requests (default 1000 10000; quick 1000)")
    parser.add_argument("--concurrency", type=int, nargs="+", metavar="C",
                        help="stream: concurrent streams (default 1 100 500; quick 1 100)")
    parser.add_argument("--targets", nargs="+", metavar="T",
                        help="stream: any of upstream relay parley litellm (default all four)")
    parser.add_argument("--no-litellm", action="store_true", help="stream: leave LiteLLM out")
    parser.add_argument("--tokens", type=int, default=200,
                        help="stream: tokens per answer (default 200; fewer gives more first-chunk "
                             "samples per cell at C=1)")
    parser.add_argument("--seconds", type=float, metavar="S",
                        help="stream: seconds of answers per cell (default 10; quick 5)")
    return parser.parse_args(argv)


async def run_one(name: str, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if name == "held":
        from bench import held

        data = await held.run(args.quick, args.held)
        return data, held.tables(data)
    if name == "stream":
        from bench import stream

        targets = args.targets or list(stream.TARGETS)
        if args.no_litellm and "litellm" in targets:
            targets.remove("litellm")
        data = await stream.run(args.quick, args.concurrency, targets, args.tokens, args.seconds)
        return data, stream.tables(data)
    if name == "fanout":
        from bench import fanout

        data = await fanout.run(args.quick)
        return data, fanout.tables(data)
    if name == "inbox":
        from bench import inbox

        data = await inbox.run(args.quick)
        return data, inbox.tables(data)
    from bench import store

    data = await store.run(args.quick)
    return data, store.tables(data)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit = raise_open_file_limit()
    names = NAMES if args.name == "all" else (args.name,)
    results: dict[str, Any] = {}
    for name in names:
        started = time.perf_counter()
        data, table = await run_one(name, args)
        data.update(machine=machine(), quick=args.quick, open_file_limit=limit,
                    seconds=round(time.perf_counter() - started, 1))
        results[name] = data
        print(f"\n## {name}  ({'quick, ' if args.quick else ''}{data['seconds']:.0f} s, "
              f"{data['machine']['cpus']} CPUs, load {data['machine']['load_average_1m']})\n")
        print(table, flush=True)
    path = args.json or ROOT / "test-output" / "bench" / f"{args.name}{'-quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results if args.name == "all" else results[args.name], indent=2) + "\n")
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
