"""``cpc-signaling bench``: a load generator to point at any deployment.

D documents x U users (one WebSocket each) join, then every user sends cursor
(or full presence) updates at a fixed rate for a while; every member counts
what it receives. Reported per run: sent, delivered, lost, duplicated,
reordered, deliveries/s, latency percentiles (from the message timestamp), the
generator's own CPU use (a saturated generator is flagged, never mistaken for a
slow server), and with ``--spawn`` the server's CPU and RSS too. ``--find-max``
raises the rate until p99 passes a bound or anything is lost.

The generator runs in ``--procs`` worker processes (see :mod:`.worker`);
this module only plans, coordinates and reports. Nothing here is imported by
the server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from .worker import Layout, StepStats, _raise_file_limit, run_queue_wait, worker_main

DEFAULT_URL = "ws://127.0.0.1:8765/ws"


# -- arguments -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url",
        default=None,
        help=f"server to load (default {DEFAULT_URL}); several, comma-separated, share the "
        "connections round-robin (instances of one service)",
    )
    target.add_argument(
        "--spawn",
        action="store_true",
        help="start a local server for the run, pinned to CPU 0 (taskset), the generator on the "
        "other CPUs; stopped at the end",
    )
    target.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the spawned server (repeatable): --server-arg=--redis-url=...",
    )
    target.add_argument(
        "--instances",
        type=int,
        default=1,
        help="with --spawn: start this many server processes, all on CPU 0 (with "
        "--server-arg=--redis-url=... they form one service)",
    )
    target.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="pid of a local process serving the run (repeatable; a server not spawned by "
        "the bench, or the Redis behind the spawned ones): its CPU and RSS are counted too",
    )
    target.add_argument("--token", default=None, help="one JWT for every connection (?token=)")
    target.add_argument(
        "--jwt-secret", default=None, help="mint an HS256 token per user with this secret"
    )
    load = parser.add_argument_group("load")
    load.add_argument("--docs", type=int, default=100, help="documents (default 100)")
    load.add_argument("--users", type=int, default=10, help="users per document (default 10)")
    load.add_argument(
        "--rate", type=float, default=None, help="messages per second per user (default: 2)"
    )
    load.add_argument(
        "--deliveries",
        type=float,
        default=None,
        help="target deliveries per second over all receivers; sets --rate",
    )
    load.add_argument("--payload", choices=("cursor", "presence"), default="cursor")
    load.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    load.add_argument("--procs", type=int, default=1, help="generator worker processes (default 1)")
    mode = parser.add_argument_group("mode")
    mode.add_argument(
        "--find-max",
        action="store_true",
        help="raise the rate until p99 exceeds --p99-bound or anything is lost",
    )
    mode.add_argument(
        "--p99-bound", type=float, default=50.0, help="ms, for --find-max (default 50)"
    )
    mode.add_argument("--max-steps", type=int, default=8, help="runs of --find-max (default 8)")
    mode.add_argument(
        "--idle",
        action="store_true",
        help="connect and join only, send nothing: measure the server's RSS per connection "
        "(needs --spawn or --server-pid)",
    )
    mode.add_argument(
        "--quick",
        action="store_true",
        help="the short standard run of `make bench` (spawns a server, under a minute)",
    )
    mode.add_argument("--repeat", type=int, default=1, help="run each load this many times")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="JSON lines instead of a table")


# -- the plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    docs: int
    users: int
    payload: str = "cursor"

    @property
    def conns(self) -> int:
        return self.docs * self.users

    @property
    def name(self) -> str:
        return f"{self.docs}x{self.users} {self.payload}"

    def rate_for(self, deliveries: float) -> float:
        """Per-user rate that gives ``deliveries`` per second (each goes to users-1 others)."""
        receivers = self.conns * (self.users - 1)
        return deliveries / receivers if receivers else 0.0


class ServerProcess:
    """A server started by the bench, pinned to one CPU."""

    def __init__(self, extra: Sequence[str], cpu: int | None) -> None:
        cmd = [sys.executable, "-m", "cpc_signaling", "serve", "--port", "0", *extra]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.url = self._wait_for_url(20.0)
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_for_url(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                self.lines.append(line)
                match = re.search(r"ws://\S+", line)
                if match:
                    return match.group(0)
        finally:
            timer.cancel()
        raise RuntimeError("the server exited before listening:\n" + "".join(self.lines))

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            del self.lines[:-200]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of ``pid`` and its threads, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _tokens(args: argparse.Namespace, user_ids: list[str]) -> tuple[list[str], list[str | None]]:
    if args.jwt_secret:
        from ..tokens import mint_token

        minted: dict[str, str] = {}
        tokens: list[str | None] = []
        for user in user_ids:
            if user not in minted:
                minted[user] = mint_token(sub=user, secret=args.jwt_secret, ttl=24 * 3600)
            tokens.append(minted[user])
        return user_ids, tokens
    if args.token:
        import jwt

        sub = str(jwt.decode(args.token, options={"verify_signature": False})["sub"])
        return [sub] * len(user_ids), [args.token] * len(user_ids)
    return user_ids, [None] * len(user_ids)


class Fleet:
    """The worker processes of one workload, connected and joined."""

    def __init__(self, url: str, workload: Workload, args: argparse.Namespace) -> None:
        self.workload = workload
        doc_ids = [str(uuid.uuid4()) for _ in range(workload.docs)]
        user_ids, tokens = _tokens(args, [str(uuid.uuid4()) for _ in range(workload.conns)])
        layout = Layout(url, doc_ids, user_ids, tokens, workload.users, workload.payload)
        procs = max(1, min(args.procs, workload.conns))
        cpus = _generator_cpus(args)
        ctx = mp.get_context("fork")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for w in range(procs):
            parent, child = ctx.Pipe()
            indexes = list(range(w, workload.conns, procs))
            proc = ctx.Process(target=worker_main, args=(layout, indexes, child, cpus), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        self.connected = 0
        self.connect_errors = 0
        self.reasons: list[str] = []
        for pipe in self.pipes:
            _, ok, failed, reasons = pipe.recv()
            self.connected += ok
            self.connect_errors += failed
            self.reasons += reasons

    def run(self, rate: float, duration: float) -> list[StepStats]:
        start_at = time.time() + 0.3
        for pipe in self.pipes:
            pipe.send(("run", rate, start_at, duration))
        return [pipe.recv()[1] for pipe in self.pipes]

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("close",))
        for pipe in self.pipes:
            with contextlib.suppress(OSError, EOFError):
                pipe.recv()
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


def _generator_cpus(args: argparse.Namespace) -> list[int]:
    if not args.spawn:
        return []
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return []
    return [c for c in cpus if c != 0] or cpus


# -- aggregation -------------------------------------------------------------------------


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def summarize(
    workload: Workload,
    rate: float,
    duration: float,
    stats: list[StepStats],
    *,
    connect_errors: int = 0,
    server_cpu: float | None = None,
    server_wait: float | None = None,
    server_rss: int | None = None,
    wall: float | None = None,
) -> dict[str, Any]:
    """One result row from the workers' counts; ``server_cpu`` and ``server_wait`` are
    seconds over ``wall`` (the whole step, drain included)."""
    wall = wall or duration
    users = workload.users
    sent_by: dict[int, int] = {}
    unique_by: dict[int, int] = {}
    for s in stats:
        sent_by.update(s.sent)
        unique_by.update(s.unique)
    # Everyone joined before anyone sent: a receiver expects every message of the
    # other members of its document sent during the run.
    doc_sent: dict[int, int] = {}
    for index, n in sent_by.items():
        doc_sent[index // users] = doc_sent.get(index // users, 0) + n
    expected = sum(doc_sent.get(r // users, 0) - sent_by.get(r, 0) for r in unique_by)
    unique = sum(unique_by.values())
    latencies = array("d")
    for s in stats:
        latencies.extend(s.latencies)
    ordered = sorted(latencies)
    delivered = sum(s.delivered for s in stats)
    sent = sum(sent_by.values())
    gen_cpu = max((s.cpu_send / duration for s in stats), default=0.0)
    row: dict[str, Any] = {
        "workload": workload.name,
        "docs": workload.docs,
        "users": workload.users,
        "connections": workload.conns,
        "rate_per_user": round(rate, 3),
        "offered_per_s": round(rate * workload.conns * (users - 1)),
        "duration_s": duration,
        "sent": sent,
        "expected": expected,
        "delivered": delivered,
        "lost": max(0, expected - unique),
        "duplicated": sum(s.duplicated for s in stats),
        "reordered": sum(s.reordered for s in stats),
        "stray": sum(s.stray for s in stats),
        "deliveries_per_s": round(delivered / duration),
        "p50_ms": round(_percentile(ordered, 0.50) * 1e3, 3),
        "p90_ms": round(_percentile(ordered, 0.90) * 1e3, 3),
        "p99_ms": round(_percentile(ordered, 0.99) * 1e3, 3),
        "max_ms": round(ordered[-1] * 1e3, 3) if ordered else float("nan"),
        "connection_errors": connect_errors + sum(s.closed for s in stats),
        "error_frames": sum(s.errors for s in stats),
        "generator_cpu_pct": round(100 * gen_cpu, 1),
        "generator_send_lag_ms": round(max((s.send_lag for s in stats), default=0.0) * 1e3, 1),
        "generator_cpu_wait_pct": round(
            100 * max((s.cpu_wait / max(s.wall, duration) for s in stats), default=0.0), 1
        ),
        "server_cpu_pct": None if server_cpu is None else round(100 * server_cpu / wall, 1),
        "server_cpu_wait_pct": None if server_wait is None else round(100 * server_wait / wall, 1),
        "server_rss_mib": None if server_rss is None else round(server_rss / 2**20, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    # Noise-proof figure on a shared machine: what one delivery costs the server in
    # CPU time, and the deliveries/s one whole core would give at that cost.
    if server_cpu and delivered:
        row["server_cpu_us_per_delivery"] = round(1e6 * server_cpu / delivered, 2)
        row["server_capacity_per_s"] = round(delivered / server_cpu)
    else:
        row["server_cpu_us_per_delivery"] = row["server_capacity_per_s"] = None
    row["generator_saturated"] = gen_cpu > 0.9 or row["generator_send_lag_ms"] > 100
    return row


def _noisy(row: dict[str, Any]) -> bool:
    """Runnable but not running for over 10% of the time: other load interfered."""
    waits = (row.get("server_cpu_wait_pct"), row.get("generator_cpu_wait_pct"))
    return any(w is not None and w > 10 for w in waits)


def verdict(row: dict[str, Any], p99_bound: float) -> str:
    if row["connection_errors"] or row["error_frames"] or row["stray"]:
        return "errors"
    if row["lost"] or row["duplicated"]:
        return "loss"
    if row["p99_ms"] != row["p99_ms"] or row["p99_ms"] > p99_bound:
        return "p99"
    if row["generator_saturated"]:
        return "gen-saturated"
    return "ok"


# -- output --------------------------------------------------------------------------------

_COLUMNS = (
    ("workload", "workload", "{}"),
    ("rate/u", "rate_per_user", "{:.2f}"),
    ("offered/s", "offered_per_s", "{:,}"),
    ("sent", "sent", "{:,}"),
    ("delivered", "delivered", "{:,}"),
    ("lost", "lost", "{:,}"),
    ("dup", "duplicated", "{:,}"),
    ("reord", "reordered", "{:,}"),
    ("deliv/s", "deliveries_per_s", "{:,}"),
    ("p50ms", "p50_ms", "{:.2f}"),
    ("p90ms", "p90_ms", "{:.2f}"),
    ("p99ms", "p99_ms", "{:.2f}"),
    ("maxms", "max_ms", "{:.1f}"),
    ("connerr", "connection_errors", "{}"),
    ("gen%", "generator_cpu_pct", "{:.0f}"),
    ("genwait%", "generator_cpu_wait_pct", "{:.0f}"),
    ("srv%", "server_cpu_pct", "{:.0f}"),
    ("srvwait%", "server_cpu_wait_pct", "{:.0f}"),
    ("us/deliv", "server_cpu_us_per_delivery", "{:.2f}"),
    ("deliv/cpu-s", "server_capacity_per_s", "{:,}"),
    ("load", "load_avg_1m", "{:.2f}"),
    ("verdict", "verdict", "{}"),
)


class Printer:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.header_done = False
        self.noisy_noted = False

    def row(self, row: dict[str, Any]) -> None:
        if row.get("noisy") and not self.noisy_noted:
            self.noisy_noted = True
            self.note(
                "* = the server or the generator waited for its CPU over 10% of the run "
                "(other load): wall-clock figures understate the server; us/deliv holds"
            )
        if self.as_json:
            print(json.dumps(row), flush=True)
            return
        cells = []
        for title, key, fmt in _COLUMNS:
            value = row.get(key)
            text = "-" if value is None else fmt.format(value)
            if key == "verdict" and row.get("noisy"):
                text += "*"  # other load held a CPU: see the note
            width = max(len(title), 9 if key != "workload" else 16)
            cells.append(text.rjust(width) if key != "workload" else text.ljust(width))
        if not self.header_done:
            titles = [
                (t.rjust(max(len(t), 9)) if k != "workload" else t.ljust(16))
                for t, k, _ in _COLUMNS
            ]
            print(" ".join(titles), flush=True)
            self.header_done = True
        print(" ".join(cells), flush=True)

    def note(self, text: str) -> None:
        if self.as_json:
            print(json.dumps({"note": text}), flush=True)
        else:
            print(f"# {text}", flush=True)


# -- running -------------------------------------------------------------------------------


@dataclass
class Target:
    url: str
    servers: list[ServerProcess]
    pids: list[int]


def _sum(values: Sequence[float | int | None]) -> Any:
    """Sum, or None when any is unknown (or there are none)."""
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _measure(fleet: Fleet, target: Target, rate: float, duration: float) -> dict[str, Any]:
    cpu0 = _sum([_proc_cpu(pid) for pid in target.pids])
    wait0 = _sum([run_queue_wait(pid) for pid in target.pids])
    t0 = time.time()
    stats = fleet.run(rate, duration)
    wall = time.time() - t0 - 0.3
    cpu1 = _sum([_proc_cpu(pid) for pid in target.pids])
    wait1 = _sum([run_queue_wait(pid) for pid in target.pids])
    server_cpu = server_wait = None
    # CPU seconds over the whole step (send and drain); shares are of the step's wall time.
    if cpu0 is not None and cpu1 is not None:
        server_cpu = cpu1 - cpu0
    if wait0 is not None and wait1 is not None:
        server_wait = wait1 - wait0
    rss = _sum([_proc_rss(pid) for pid in target.pids])
    return summarize(
        fleet.workload,
        rate,
        duration,
        stats,
        connect_errors=fleet.connect_errors,
        server_cpu=server_cpu,
        server_wait=server_wait,
        server_rss=rss,
        wall=max(wall, duration),
    )


def _steps_fixed(rate: float, repeat: int) -> Iterator[float]:
    for _ in range(repeat):
        yield rate


def run_workload(
    workload: Workload,
    target: Target,
    args: argparse.Namespace,
    printer: Printer,
    *,
    rate: float,
    duration: float,
    find_max: bool = False,
) -> list[dict[str, Any]]:
    fleet = Fleet(target.url, workload, args)
    rows: list[dict[str, Any]] = []
    try:
        if fleet.connect_errors:
            printer.note(
                f"{workload.name}: {fleet.connect_errors} of {workload.conns} connections "
                f"failed: {'; '.join(fleet.reasons)}"
            )
        if not find_max:
            for r in _steps_fixed(rate, args.repeat):
                row = _measure(fleet, target, r, duration)
                row["verdict"] = verdict(row, args.p99_bound)
                row["noisy"] = _noisy(row)
                printer.row(row)
                rows.append(row)
            return rows
        good: float | None = None
        bad: float | None = None
        r = rate
        for _ in range(args.max_steps):
            for _attempt in range(3):
                row = _measure(fleet, target, r, duration)
                row["verdict"] = verdict(row, args.p99_bound)
                row["step"] = len(rows) + 1
                row["noisy"] = _noisy(row)
                printer.row(row)
                rows.append(row)
                # Failed while other load held the CPUs: not the server's doing; again.
                if row["verdict"] == "ok" or not row["noisy"]:
                    break
                printer.note("other load on the CPUs during that run: measuring again")
                time.sleep(1.0)
            if row["verdict"] == "gen-saturated":
                printer.note("the generator is saturated: add --procs or CPUs; stopping")
                break
            if row["verdict"] == "ok":
                good = r
            else:
                bad = r
            if bad is None:
                r *= 1.5
            elif good is None:
                r /= 2
            elif bad / good < 1.08:
                break
            else:
                r = (good + bad) / 2
            time.sleep(1.0)  # let the server settle between steps
        best = [x for x in rows if x["verdict"] == "ok"]
        if best:
            top = max(best, key=lambda x: x["deliveries_per_s"])
            printer.note(
                f"{workload.name}: max {top['deliveries_per_s']:,} deliveries/s with "
                f"p99 {top['p99_ms']} ms <= {args.p99_bound} ms and no loss"
            )
            rows.append({**top, "max": True})
        return rows
    finally:
        fleet.close()


def run_idle(
    workload: Workload, target: Target, args: argparse.Namespace, printer: Printer
) -> None:
    if not target.pids:
        raise SystemExit("--idle needs --spawn or --server-pid to read the server's RSS")
    time.sleep(0.5)
    before = _sum([_proc_rss(pid) for pid in target.pids]) or 0
    fleet = Fleet(target.url, workload, args)
    try:
        time.sleep(2.0)
        after = _sum([_proc_rss(pid) for pid in target.pids]) or 0
        n = fleet.connected
        row = {
            "workload": f"{workload.name} idle",
            "connections": n,
            "connection_errors": fleet.connect_errors,
            "rss_before_mib": round(before / 2**20, 1),
            "rss_after_mib": round(after / 2**20, 1),
            "rss_per_connection_kib": round((after - before) / max(n, 1) / 1024, 2),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            printer.note(
                f"{row['workload']}: {n:,} connections joined ({fleet.connect_errors} failed"
                f"{': ' + '; '.join(fleet.reasons) if fleet.reasons else ''}); server RSS "
                f"{row['rss_before_mib']} -> {row['rss_after_mib']} MiB = "
                f"{row['rss_per_connection_kib']} KiB per connection"
            )
    finally:
        fleet.close()


def main(args: argparse.Namespace) -> int:
    _raise_file_limit()
    printer = Printer(args.json)
    servers: list[ServerProcess] = []
    if args.quick:
        args.spawn = True
    if args.spawn:
        cpus = _cpus()
        extra = ["--max-connections", "0", *args.server_arg]
        for _ in range(max(1, args.instances)):
            server = ServerProcess(extra, 0 if len(cpus) > 1 else None)
            servers.append(server)
            printer.note(
                f"spawned server pid {server.pid} at {server.url}"
                + (" pinned to CPU 0, generator on the others" if len(cpus) > 1 else "")
            )
    target = Target(
        url=",".join(s.url for s in servers) if servers else (args.url or DEFAULT_URL),
        servers=servers,
        pids=[s.pid for s in servers] + list(args.server_pid),
    )
    if args.spawn and len(_cpus()) > 1:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, _generator_cpus(args))
    printer.note(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    try:
        if args.quick:
            plan = [
                (Workload(100, 10), 25_000.0),
                (Workload(100, 10), 100_000.0),
                (Workload(1, 100), 150_000.0),
            ]
            for workload, deliveries in plan:
                run_workload(
                    workload,
                    target,
                    args,
                    printer,
                    rate=workload.rate_for(deliveries),
                    duration=min(args.duration, 4.0),
                )
            return 0
        workload = Workload(args.docs, args.users, args.payload)
        if args.idle:
            run_idle(workload, target, args, printer)
            return 0
        if args.deliveries is not None:
            rate = workload.rate_for(args.deliveries)
        elif args.rate is not None:
            rate = args.rate
        else:
            rate = workload.rate_for(10_000.0) if args.find_max else 2.0
        run_workload(
            workload,
            target,
            args,
            printer,
            rate=rate,
            duration=args.duration,
            find_max=args.find_max,
        )
        return 0
    finally:
        for server in servers:
            server.stop()


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))
