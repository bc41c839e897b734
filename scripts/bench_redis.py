"""The Redis engine's figures, one command: one instance against two instances + Redis.

    .venv/bin/python scripts/bench_redis.py [--runs 3] [--out results.jsonl] [--only NAME]

Runs ``cpc-signaling bench`` (JSON lines) for each row below, ``--runs`` times over,
interleaved (one of each, then again), so that the neighbours' load falls on every
configuration alike; keeps every line in ``--out``; prints medians as Markdown tables.
Every figure of the "Redis engine" section of docs/performance.md comes from here.

Rows, each on one core (servers and Redis pinned to CPU 0, the generator on the others):

* equal load: 100 x 10 at 25,000 deliveries/s and 1 x 100 at 100,000/s, 5 s, three
  repeats per run: server CPU per delivery (Redis included), p99, cross-instance p99;
* saturation: ``--find-max`` (p99 <= 50 ms, no loss) from 25,000/s (100 x 10) and
  60,000/s (1 x 100): the highest clean step;
* targeting: ``--targeting 2,4,8``: Redis output bytes per event and per delivery.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ONE = ["--spawn"]
TWO = ["--spawn", "--spawn-redis", "--instances", "2"]
W100 = ["--docs", "100", "--users", "10"]
W1 = ["--docs", "1", "--users", "100"]

ROWS: dict[str, list[str]] = {
    "one 100x10 @25k": [*ONE, *W100, "--deliveries", "25000", "--duration", "5", "--repeat", "3"],
    "two 100x10 @25k": [*TWO, *W100, "--deliveries", "25000", "--duration", "5", "--repeat", "3"],
    "one 1x100 @100k": [*ONE, *W1, "--deliveries", "100000", "--duration", "5", "--repeat", "3"],
    "two 1x100 @100k": [*TWO, *W1, "--deliveries", "100000", "--duration", "5", "--repeat", "3"],
    "one 100x10 max": [*ONE, *W100, "--find-max", "--deliveries", "25000", "--duration", "4"],
    "two 100x10 max": [*TWO, *W100, "--find-max", "--deliveries", "25000", "--duration", "4"],
    "one 1x100 max": [*ONE, *W1, "--find-max", "--deliveries", "60000", "--duration", "4"],
    "two 1x100 max": [*TWO, *W1, "--find-max", "--deliveries", "60000", "--duration", "4"],
    "targeting": ["--targeting", "2,4,8"],
}


def bench(args: list[str]) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "cpc_signaling", "bench", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(f"bench {' '.join(args)} failed with {proc.returncode}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def med(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: Any, spec: str = "{:,.1f}") -> str:
    return "-" if value is None else spec.format(value)


def span(values: list[Any], spec: str = "{:,.1f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{fmt(med(values), spec)} ({fmt(min(values), spec)}-{fmt(max(values), spec)})"


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    print("\n## Equal load (median, range over every repeat)\n")
    print(
        "| row | us/delivery (Redis incl.) | p99 ms | cross p99 ms | lost | "
        "redis % | other % | noisy | load |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, lines in results.items():
        rows = [r for r in lines if "workload" in r and not r.get("max")]
        if "@" not in name or not rows:
            continue
        noisy = sum(1 for r in rows if r.get("noisy"))
        print(
            f"| {name} | {span([r['server_cpu_us_per_delivery'] for r in rows], '{:.2f}')} "
            f"| {span([r['p99_ms'] for r in rows], '{:.2f}')} "
            f"| {span([r['cross_p99_ms'] for r in rows], '{:.2f}')} "
            f"| {sum(r['lost'] for r in rows)} "
            f"| {span([r['redis_cpu_pct'] for r in rows], '{:.0f}')} "
            f"| {span([r['other_cpu_pct'] for r in rows], '{:.0f}')} "
            f"| {noisy}/{len(rows)} | {span([r['load_avg_1m'] for r in rows], '{:.2f}')} |"
        )
    print("\n## Saturation (highest clean step of each --find-max run; median, range)\n")
    print("| row | deliveries/s | p99 ms | us/delivery there | runs | noisy steps |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, lines in results.items():
        if not name.endswith("max"):
            continue
        tops = [r for r in lines if r.get("max")]
        steps = [r for r in lines if "workload" in r and not r.get("max")]
        noisy = sum(1 for r in steps if r.get("noisy"))
        print(
            f"| {name} | {span([r['deliveries_per_s'] for r in tops], '{:,.0f}')} "
            f"| {span([r['p99_ms'] for r in tops], '{:.2f}')} "
            f"| {span([r['server_cpu_us_per_delivery'] for r in tops], '{:.2f}')} "
            f"| {len(tops)} | {noisy}/{len(steps)} |"
        )
    lines = results.get("targeting", [])
    if lines:
        print("\n## Redis output per event (median, range over the runs)\n")
        print("| instances | phase | B/event | B/delivery | commands/event |")
        print("| --- | --- | --- | --- | --- |")
        keys = sorted({(r["instances"], r["phase"]) for r in lines if r.get("targeting")})
        for k, phase in sorted(keys, key=lambda x: (x[1], x[0])):
            rows = [r for r in lines if r.get("instances") == k and r.get("phase") == phase]
            print(
                f"| {k} | {phase} | {span([r['redis_bytes_per_event'] for r in rows])} "
                f"| {span([r['redis_bytes_per_delivery'] for r in rows])} "
                f"| {span([r['redis_commands_per_event'] for r in rows], '{:.2f}')} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="bench_redis.jsonl")
    parser.add_argument("--only", action="append", help="row names (repeatable); default all")
    parser.add_argument("--report", action="store_true", help="only report --out's lines")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    if args.report:
        with open(args.out) as f:
            for text in f:
                item = json.loads(text)
                results.setdefault(item["row"], []).append(item)
        report(results)
        return
    names = args.only or list(ROWS)
    with open(args.out, "a") as out:
        for run in range(1, args.runs + 1):
            for name in names:
                started = time.time()
                load = os.getloadavg()
                lines = bench(ROWS[name])
                for line in lines:
                    line.update(row=name, run=run, load_at_start=load[0])
                    out.write(json.dumps(line) + "\n")
                out.flush()
                results.setdefault(name, []).extend(lines)
                print(
                    f"run {run} {name}: {len(lines)} lines in {time.time() - started:.0f} s, "
                    f"load at start {load[0]:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    report(results)


if __name__ == "__main__":
    main()
