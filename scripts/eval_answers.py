#!/usr/bin/env python3
"""How well does Parley answer? Runs an evaluation set through the real HTTP API and prints the verdicts.

An evaluation set is a directory (default: tests/data/eval/plausible) with
  pages.json      the pages (file, public URL, where the text came from), see its SOURCES.md;
  pages/          the text of each page;
  questions.json  questions as visitors write them; each answerable one names its page(s) and the
                  key facts a right answer contains (any one spelling of each fact), the others none.

It loads the pages into a fresh site in a temporary data directory, starts a real Parley on an
unused port (the answerer of PARLEY_AI_* if set and --model is given, else the offline answerer),
asks every question in its own session, and judges each answer:
  grounded                    a page it should come from is among its sources, with every key fact
  right page, fact missing    a right page is among its sources but a key fact is not in the text
  wrong page                  it quotes pages, none of them a right one
  declined (answerable)       it said it did not know although the pages answer it
  correctly declined          it said it did not know, and the pages do not answer it
  confidently wrong           wrong page, or an answer (with sources) the pages cannot give
An answer without sources counts as "I don't know". With --demo it also times the demo site.

    scripts/eval_answers.py                 # the table
    scripts/eval_answers.py --show          # and every answer that was not right
    scripts/eval_answers.py --json          # one JSON object (the test reads this)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.app import build_services  # noqa: E402
from server.config import Config  # noqa: E402
from server.knowledge import KnowledgeService  # noqa: E402

DEFAULT_SET = ROOT / "tests" / "data" / "eval" / "plausible"
VERDICTS = ["grounded", "right page, fact missing", "wrong page", "declined (answerable)",
            "correctly declined", "confidently wrong"]
DEMO_QUESTIONS = ["Do you ship to Canada?", "How do I return something?", "what size should i order",
                  "How long does delivery take?", "can i wash the jacket in a machine",
                  "Do you sell gift cards?"]
START_TIMEOUT = 60.0


async def load_pages(data_dir: Path, eval_dir: Path) -> str:
    """A site holding the set's pages, in `data_dir`, through the same ingest as `kb add`."""
    manifest = json.loads((eval_dir / "pages.json").read_text())
    services = await build_services(Config(data_dir=data_dir))
    try:
        site = await services.sites.create(f"Evaluation: {eval_dir.name}")
        ingest = KnowledgeService(services.store, services.knowledge)
        for page in manifest["pages"]:
            await ingest.add_file(site, eval_dir / page["file"], url=page["url"])
        await services.knowledge.passage_count(site.id)
        return site.site_key
    finally:
        await services.close()


def start_server(data_dir: Path, *, demo: bool, model: bool) -> tuple[subprocess.Popen[str], str, str | None]:
    """`python -m server serve` on an unused port; (process, base URL, demo site key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_") or (model and k.startswith("PARLEY_AI_"))}
    command = [sys.executable, "-m", "server", "serve", "--data-dir", str(data_dir), "--port", "0",
               "--offline-chunk-delay", "0", "--log-level", "WARNING"]
    if demo:
        command.append("--demo")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    assert process.stdout is not None
    base_url = demo_key = None
    deadline = time.monotonic() + START_TIMEOUT
    for line in process.stdout:
        if match := re.search(r"serving on (http://\S+)", line):
            base_url = match.group(1)
        if match := re.search(r"Demo site key: (sk_\S+)", line):
            demo_key = match.group(1)
        if "Stop with Ctrl-C" in line or time.monotonic() > deadline:
            break
    if base_url is None:
        process.kill()
        raise SystemExit("the server did not start; run it by hand to see why")
    return process, base_url, demo_key


async def ask(client: httpx.AsyncClient, site_key: str, session: str, question: str) -> dict[str, Any]:
    """One question through POST /api/v1/chat/stream: text, sources, handoff, time to first chunk."""
    body = {"site_key": site_key, "session_id": session, "message": question}
    started = time.perf_counter()
    first: float | None = None
    text, meta, error = [], {}, None
    async with client.stream("POST", "/api/v1/chat/stream", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"HTTP {response.status_code}: {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "chunk":
                first = first if first is not None else time.perf_counter() - started
                text.append(event["content"])
            elif event["type"] == "error":
                error = event["error"]
            elif event["type"] == "done":
                meta = event["meta"]
    return {"text": "".join(text), "sources": meta.get("sources", []), "handoff": meta.get("handoff"),
            "error": error, "first_chunk_ms": None if first is None else first * 1000}


def normalised(text: str) -> str:
    text = text.lower().replace("’", "'").replace("‘", "'")
    text = re.sub(r"[*_`]", "", text)
    return re.sub(r"\s+", " ", text)


def judge(question: dict[str, Any], answer: dict[str, Any], urls: dict[str, str]) -> str:
    got = {s.get("url") for s in answer["sources"]}
    if not question["pages"]:
        return "correctly declined" if not got else "confidently wrong"
    if not got:
        return "declined (answerable)"
    if not got & {urls[p] for p in question["pages"]}:
        return "wrong page"
    text = normalised(answer["text"])
    if all(any(normalised(fact) in text for fact in alternatives) for alternatives in question["facts"]):
        return "grounded"
    return "right page, fact missing"


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {v: sum(r["verdict"] == v for r in results) for v in VERDICTS}
    answerable = sum(1 for r in results if r["pages"])
    times = [r["first_chunk_ms"] for r in results if r["first_chunk_ms"] is not None]
    return {
        "questions": len(results), "answerable": answerable, "unanswerable": len(results) - answerable,
        "counts": counts,
        "grounded_share": counts["grounded"] / answerable if answerable else 0.0,
        "confidently_wrong_share": (counts["wrong page"] + counts["confidently wrong"]) / len(results)
        if results else 0.0,
        "declined_share": counts["correctly declined"] / (len(results) - answerable)
        if len(results) > answerable else 0.0,
        "median_first_chunk_ms": statistics.median(times) if times else None,
    }


async def evaluate(eval_dir: Path, *, demo: bool, model: bool) -> dict[str, Any]:
    questions = json.loads((eval_dir / "questions.json").read_text())
    urls = {Path(p["file"]).stem: p["url"] for p in json.loads((eval_dir / "pages.json").read_text())["pages"]}
    with tempfile.TemporaryDirectory(prefix="parley-eval-") as tmp:
        data_dir = Path(tmp)
        site_key = await load_pages(data_dir, eval_dir)
        process, base_url, demo_key = start_server(data_dir, demo=demo, model=model)
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
                results = []
                for number, question in enumerate(questions):
                    answer = await ask(client, site_key, f"sess_eval{number:012d}", question["question"])
                    results.append({**question, **answer, "verdict": judge(question, answer, urls)})
                demo_times = []
                if demo_key:
                    for round_ in range(5):
                        for number, text in enumerate(DEMO_QUESTIONS):
                            answer = await ask(client, demo_key, f"sess_demo{round_:04d}{number:08d}", text)
                            demo_times.append(answer["first_chunk_ms"])
        finally:
            process.terminate()
            process.wait(timeout=15)
    report = {"set": str(eval_dir), "all": summary(results), "results": results,
              "splits": {s: summary([r for r in results if r.get("split") == s]) for s in ("tune", "check")}}
    if demo_times:
        report["demo_median_first_chunk_ms"] = statistics.median(t for t in demo_times if t is not None)
    return report


def print_report(report: dict[str, Any], show: bool) -> None:
    columns = {"all": report["all"], **report["splits"]}
    print(f"evaluation set: {report['set']}")
    print(f"{'':28}" + "".join(f"{name:>10}" for name in columns))
    print(f"{'questions (answerable)':28}" + "".join(
        f"{s['questions']:>5} ({s['answerable']:>2})" for s in columns.values()))
    for verdict in VERDICTS:
        print(f"{verdict:28}" + "".join(f"{s['counts'][verdict]:>10}" for s in columns.values()))
    print(f"{'grounded / answerable':28}" + "".join(f"{s['grounded_share']:>10.0%}" for s in columns.values()))
    print(f"{'confidently wrong / all':28}" + "".join(
        f"{s['confidently_wrong_share']:>10.0%}" for s in columns.values()))
    print(f"{'median first chunk (ms)':28}" + "".join(
        f"{s['median_first_chunk_ms']:>10.1f}" for s in columns.values()))
    if "demo_median_first_chunk_ms" in report:
        print(f"demo site: median time to first chunk {report['demo_median_first_chunk_ms']:.1f} ms")
    if show:
        for r in report["results"]:
            if r["verdict"] in ("grounded", "correctly declined"):
                continue
            print(f"\n[{r['id']} {r['split']}] {r['verdict']}: {r['question']}")
            print("   wanted:", r["pages"], r["facts"])
            print("   got:   ", [s["title"] for s in r["sources"]])
            print("   text:  ", r["text"][:300].replace("\n", " "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", type=Path, default=DEFAULT_SET, help="the evaluation set's directory")
    parser.add_argument("--demo", action="store_true", help="also time answers on the demo site")
    parser.add_argument("--model", action="store_true",
                        help="answer with the model of PARLEY_AI_* instead of the offline answerer")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--show", action="store_true", help="print each answer that was not right")
    args = parser.parse_args()
    report = asyncio.run(evaluate(args.set.resolve(), demo=args.demo, model=args.model))
    if args.json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
    else:
        print_report(report, args.show)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
