"""The Redis engine's figures, one command: one instance against two instances + Redis.

    .venv/bin/python scripts/bench_redis.py [--runs 3] [--out FILE.jsonl] [--only NAME]
        [--compare-src DIR --compare-label before --label after]

Runs ``cpc-signaling bench`` (JSON lines) for each row below, ``--runs`` times over,
interleaved (one of each, then again), so that the neighbours' load falls on every
configuration alike; keeps every line in ``--out``; prints medians as Markdown tables.
Every figure of the "Redis engine" section of docs/performance.md comes from here.

Rows, each on one core (servers and Redis pinned to CPU 0, the generator on the others):

* equal load: 100 x 10 at 25,000 deliveries/s and 1 x 100 at 100,000/s, 5 s, three
  repeats per run: server CPU per delivery (Redis included), p99, cross-instance p99;
  and the same below saturation on a slow machine (100 x 10 at 10,000/s, 1 x 100 at
  40,000/s): where the servers' core is saturated ("sat." counts those runs), the CPU
  per delivery is the core's time over the deliveries, not a cost;
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
    "one 100x10 @10k": [*ONE, *W100, "--deliveries", "10000", "--duration", "5", "--repeat", "3"],
    "two 100x10 @10k": [*TWO, *W100, "--deliveries", "10000", "--duration", "5", "--repeat", "3"],
    "one 1x100 @100k": [*ONE, *W1, "--deliveries", "100000", "--duration", "5", "--repeat", "3"],
    "two 1x100 @100k": [*TWO, *W1, "--deliveries", "100000", "--duration", "5", "--repeat", "3"],
    "one 1x100 @40k": [*ONE, *W1, "--deliveries", "40000", "--duration", "5", "--repeat", "3"],
    "two 1x100 @40k": [*TWO, *W1, "--deliveries", "40000", "--duration", "5", "--repeat", "3"],
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
    if len(values) == 1:
        return fmt(values[0], spec)
    return f"{fmt(med(values), spec)} ({fmt(min(values), spec)}-{fmt(max(values), spec)})"


Results = dict[str, list[dict[str, Any]]]  # "label: row" -> its JSON lines


def quiet(row: dict[str, Any]) -> bool:
    """No other process took over 10 % of the servers' CPU during the run."""
    other = row.get("other_cpu_server_pct")
    return other is not None and other <= 10


def _steps(results: Results, key: str) -> list[dict[str, Any]]:
    return [r for r in results.get(key, []) if "verdict" in r and not r.get("max")]


def _tops(results: Results, key: str) -> list[dict[str, Any]]:
    """Per --find-max run: the clean step ("ok") that delivered most."""
    steps = _steps(results, key)
    tops = []
    for run in sorted({r["run"] for r in steps}):
        ok = [r for r in steps if r["run"] == run and r["verdict"] == "ok"]
        if ok:
            tops.append(max(ok, key=lambda r: r["deliveries_per_s"]))
    return tops


def _us(rows: list[dict[str, Any]]) -> list[Any]:
    return [r["server_cpu_us_per_delivery"] for r in rows]


def report(results: Results, labels: list[str]) -> None:
    print("\n## Equal load (median (range) over every repeat of every run)\n")
    print(
        "| row | us/delivery (Redis incl.) | same, quiet runs | p99 ms | cross p99 ms | lost | "
        "redis % | core % | sat. | other % | noisy | load |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in results:
        rows = _steps(results, key)
        if "@" not in key or not rows:
            continue
        noisy = sum(1 for r in rows if r.get("noisy"))
        calm = [r for r in rows if quiet(r)]
        print(
            f"| {key} | {span(_us(rows), '{:.2f}')} "
            f"| {span(_us(calm), '{:.2f}')} ({len(calm)}) "
            f"| {span([r['p99_ms'] for r in rows], '{:.2f}')} "
            f"| {span([r['cross_p99_ms'] for r in rows], '{:.2f}')} "
            f"| {sum(r['lost'] for r in rows)} "
            f"| {span([r['redis_cpu_pct'] for r in rows], '{:.0f}')} "
            f"| {span([r.get('server_core_pct') for r in rows], '{:.0f}')} "
            f"| {sum(1 for r in rows if r.get('server_saturated'))}/{len(rows)} "
            f"| {span([r['other_cpu_pct'] for r in rows], '{:.0f}')} "
            f"| {noisy}/{len(rows)} | {span([r['load_avg_1m'] for r in rows], '{:.2f}')} |"
        )
    print("\n## Saturation (highest clean step of each --find-max run; median (range))\n")
    print("| row | deliveries/s | p99 ms | us/delivery there | runs | noisy steps |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key in results:
        if not key.endswith("max"):
            continue
        steps = _steps(results, key)
        tops = _tops(results, key)
        noisy = sum(1 for r in steps if r.get("noisy"))
        print(
            f"| {key} | {span([r['deliveries_per_s'] for r in tops], '{:,.0f}')} "
            f"| {span([r['p99_ms'] for r in tops], '{:.2f}')} "
            f"| {span(_us(tops), '{:.2f}')} "
            f"| {len(tops)} | {noisy}/{len(steps)} |"
        )
    print("\n## Two instances + Redis as a share of one instance (medians)\n")
    for label in labels:
        for workload, load in (
            ("100x10", "25k"),
            ("100x10", "10k"),
            ("1x100", "100k"),
            ("1x100", "40k"),
        ):
            figures = []
            for what, pick in (("all runs", lambda r: True), ("quiet runs", quiet)):
                cost = {
                    n: med(
                        _us(
                            [
                                r
                                for r in _steps(results, f"{label}: {n} {workload} @{load}")
                                if pick(r)
                            ]
                        )
                    )
                    for n in ("one", "two")
                }
                ratio = cost["one"] / cost["two"] if cost["one"] and cost["two"] else None
                figures.append(f"{fmt(ratio and 100 * ratio, '{:.0f}')} % ({what})")
            top = {
                n: med(
                    [r["deliveries_per_s"] for r in _tops(results, f"{label}: {n} {workload} max")]
                )
                for n in ("one", "two")
            }
            by_top = top["two"] / top["one"] if top["one"] and top["two"] else None
            print(
                f"- {label}, {workload}: by CPU per delivery at {load}/s {', '.join(figures)}; "
                f"by deliveries at saturation {fmt(by_top and 100 * by_top, '{:.0f}')} %"
            )
    for label in labels:
        lines = [r for r in results.get(f"{label}: targeting", []) if r.get("targeting")]
        if not lines:
            continue
        print(f"\n## {label}: Redis output per event (median (range) over the runs)\n")
        print("| instances | phase | B/event | B/delivery | commands/event | Redis CPU us/event |")
        print("| --- | --- | --- | --- | --- | --- |")
        keys = sorted({(r["instances"], r["phase"]) for r in lines}, key=lambda x: (x[1], x[0]))
        for k, phase in keys:
            rows = [r for r in lines if r["instances"] == k and r["phase"] == phase]
            print(
                f"| {k} | {phase} | {span([r['redis_bytes_per_event'] for r in rows])} "
                f"| {span([r['redis_bytes_per_delivery'] for r in rows])} "
                f"| {span([r['redis_commands_per_event'] for r in rows], '{:.2f}')} "
                f"| {span([r.get('redis_cpu_us_per_event') for r in rows], '{:.1f}')} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="bench_redis.jsonl", help="JSON lines (appended)")
    parser.add_argument("--only", action="append", help="row names (repeatable); default all")
    parser.add_argument("--label", default="current", help="this checkout's rows' label")
    parser.add_argument(
        "--compare-src",
        metavar="DIR",
        help="also run every row with the servers from this source tree (a checkout of "
        "the commit before a change, e.g. `git worktree add DIR COMMIT`, or its src/), "
        "interleaved with this checkout's",
    )
    parser.add_argument("--compare-label", default="compare")
    parser.add_argument("--report", action="store_true", help="only report --out's lines")
    args = parser.parse_args()
    results: Results = {}
    labels: list[str] = []
    if args.report:
        with open(args.out) as f:
            for text in f:
                item = json.loads(text)
                label = item.get("label", args.label)
                if label not in labels:
                    labels.append(label)
                results.setdefault(f"{label}: {item['row']}", []).append(item)
        report(results, labels)
        return
    codes: list[tuple[str, list[str]]] = [(args.label, [])]
    if args.compare_src:
        codes.append((args.compare_label, ["--server-src", args.compare_src]))
    labels = [label for label, _ in codes]
    names = args.only or list(ROWS)
    with open(args.out, "a") as out:
        for run in range(1, args.runs + 1):
            for name in names:
                # Alternate which code goes first, so that neither always follows the other.
                for label, extra in codes if run % 2 else codes[::-1]:
                    started = time.time()
                    load = os.getloadavg()
                    lines = bench([*ROWS[name], *extra])
                    for line in lines:
                        line.update(row=name, run=run, label=label, load_at_start=load[0])
                        out.write(json.dumps(line) + "\n")
                    out.flush()
                    results.setdefault(f"{label}: {name}", []).extend(lines)
                    print(
                        f"run {run} {label} {name}: {len(lines)} lines in "
                        f"{time.time() - started:.0f} s, load at start {load[0]:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    report(results, labels)


if __name__ == "__main__":
    main()
