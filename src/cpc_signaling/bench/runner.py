"""``cpc-signaling bench``: a load generator to point at any deployment.

D documents x U users (one WebSocket each) join, then every user sends cursor
(or full presence) updates at a fixed rate for a while; every member counts
what it receives. Reported per run: sent, delivered, lost, duplicated,
reordered, deliveries/s, latency percentiles (from the message timestamp), the
generator's own CPU use (a saturated generator is flagged, never mistaken for a
slow server), and with ``--spawn`` the server's CPU and RSS too. ``--find-max``
raises the rate until p99 passes a bound or anything is lost. ``--spawn-redis``
adds a private Redis the spawned instances share (counted with them), and
``--targeting`` (:mod:`.targeting`, dispatched by the package) measures Redis's output per event.

The generator runs in ``--procs`` worker processes (see :mod:`.worker`);
this module only plans, coordinates and reports. Nothing here is imported by
the server.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import os
import time
import uuid
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .processes import RedisProcess, ServerProcess, cpu_busy, package_path, proc_cpu, proc_rss
from .worker import Layout, StepStats, raise_file_limit, run_queue_wait, worker_main

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
        "--server-src",
        default=None,
        metavar="DIR",
        help="run the spawned servers from this source tree (a checkout, or its src/: the "
        "directory holding cpc_signaling/), e.g. an older commit's `git worktree`, to compare "
        "it with this one in one sitting",
    )
    target.add_argument(
        "--instances",
        type=int,
        default=1,
        help="with --spawn: start this many server processes, all on CPU 0 (with "
        "--server-arg=--redis-url=... they form one service)",
    )
    target.add_argument(
        "--spawn-redis",
        action="store_true",
        help="with --spawn: also start a private redis-server (free port, no persistence) "
        "pinned to the servers' CPU, make the spawned servers one service on it, count its "
        "CPU with the servers', stop it at the end",
    )
    target.add_argument(
        "--redis-server",
        default=None,
        metavar="PATH",
        help="the redis-server binary for --spawn-redis and --targeting (default: on PATH)",
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
    load.add_argument(
        "--docs",
        type=int,
        default=None,
        help="documents (default 100; with --targeting: each instance's own, default 4)",
    )
    load.add_argument(
        "--users",
        type=int,
        default=None,
        help="users per document (default 10; with --targeting: 8)",
    )
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
        help="the short standard run of `make bench`: one spawned server at three loads, then "
        "two instances + a private Redis at one (about 30 s)",
    )
    mode.add_argument("--repeat", type=int, default=1, help="run each load this many times")
    mode.add_argument(
        "--targeting",
        default=None,
        metavar="K[,K...]",
        help="Redis output per event with K instances on a private Redis, each with its own "
        "documents plus one shared by all (e.g. 2,4,8); see docs/performance.md",
    )
    mode.add_argument(
        "--events",
        type=int,
        default=4000,
        help="with --targeting: messages sent per phase (default 4000)",
    )
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

    def __init__(
        self,
        url: str,
        workload: Workload,
        args: argparse.Namespace,
        route: list[int] | None = None,
    ) -> None:
        self.workload = workload
        doc_ids = [str(uuid.uuid4()) for _ in range(workload.docs)]
        user_ids, tokens = _tokens(args, [str(uuid.uuid4()) for _ in range(workload.conns)])
        layout = Layout(url, doc_ids, user_ids, tokens, workload.users, workload.payload, route)
        self.layout = layout
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

    def run(self, rate: float, duration: float, senders: range | None = None) -> list[StepStats]:
        """One step: every connection (or only ``senders``) sends at ``rate`` per second."""
        start_at = time.time() + 0.3
        for pipe in self.pipes:
            pipe.send(("run", rate, start_at, duration, senders))
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
    cpus = _cpus()
    return [c for c in cpus if c != 0] or cpus


# -- aggregation -------------------------------------------------------------------------


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


SATURATED_PCT = 90.0
"""The pinned servers' CPU busy at least this much of a run: saturated (see summarize)."""


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
    redis_cpu: float | None = None,
    other_server_cpu: float | None = None,
    other_generator_cpu: float | None = None,
    wall: float | None = None,
) -> dict[str, Any]:
    """One result row from the workers' counts; ``server_cpu`` (Redis included when it is
    counted with the servers), ``server_wait``, ``redis_cpu`` and the ``other_*`` CPU (what
    other processes ran on the servers' and on the generator's CPUs) are seconds over
    ``wall`` (the whole step, drain included)."""
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
    cross = array("d")
    for s in stats:
        cross.extend(s.cross_latencies)
    cross_ordered = sorted(cross)

    def pct(seconds: float | None) -> float | None:
        return None if seconds is None else round(100 * seconds / wall, 1)

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
        # Deliveries to a member on another instance than the sender's (several URLs).
        "cross_deliveries": len(cross),
        "cross_p50_ms": round(_percentile(cross_ordered, 0.50) * 1e3, 3) if cross else None,
        "cross_p99_ms": round(_percentile(cross_ordered, 0.99) * 1e3, 3) if cross else None,
        "connection_errors": connect_errors + sum(s.closed for s in stats),
        "error_frames": sum(s.errors for s in stats),
        "generator_cpu_pct": round(100 * gen_cpu, 1),
        "generator_send_lag_ms": round(max((s.send_lag for s in stats), default=0.0) * 1e3, 1),
        "generator_cpu_wait_pct": round(
            100 * max((s.cpu_wait / max(s.wall, duration) for s in stats), default=0.0), 1
        ),
        "server_cpu_pct": pct(server_cpu),
        "server_cpu_wait_pct": pct(server_wait),
        "redis_cpu_pct": pct(redis_cpu),
        "other_cpu_server_pct": pct(other_server_cpu),
        "other_cpu_generator_pct": pct(other_generator_cpu),
        "server_rss_mib": None if server_rss is None else round(server_rss / 2**20, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    others = [
        o for o in (row["other_cpu_server_pct"], row["other_cpu_generator_pct"]) if o is not None
    ]
    row["other_cpu_pct"] = max(others) if others else None
    # Noise-proof figure on a shared machine: what one delivery costs the server in
    # CPU time, and the deliveries/s one whole core would give at that cost.
    if server_cpu and delivered:
        row["server_cpu_us_per_delivery"] = round(1e6 * server_cpu / delivered, 2)
        row["server_capacity_per_s"] = round(delivered / server_cpu)
    else:
        row["server_cpu_us_per_delivery"] = row["server_capacity_per_s"] = None
    row["generator_saturated"] = gen_cpu > 0.9 or row["generator_send_lag_ms"] > 100
    # Pinned servers (--spawn): how busy their one CPU was while the load was sent
    # (their Redis is in server_cpu; other processes included). Past SATURATED_PCT
    # the core had no idle time left, so the servers' CPU per delivery is the core's
    # time divided by the deliveries: it says how much was offered, not what a
    # delivery costs (compare below saturation).
    if other_server_cpu is not None and server_cpu is not None:
        row["server_core_pct"] = round(100 * (server_cpu + other_server_cpu) / duration, 1)
        row["server_saturated"] = row["server_core_pct"] >= SATURATED_PCT
    else:
        row["server_core_pct"] = None
        row["server_saturated"] = False
    return row


def _noisy(row: dict[str, Any]) -> bool:
    """Other load interfered: other processes used over 10% of the servers' or the
    generator's CPUs (when they are pinned, so that this is known); otherwise the server or
    the generator was runnable but not running over 10% of the time. (Several servers and
    Redis pinned to one CPU wait for each other: their wait alone says nothing of others.)"""
    others = (row.get("other_cpu_server_pct"), row.get("other_cpu_generator_pct"))
    if any(o is not None for o in others):
        return any(o is not None and o > 10 for o in others)
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
    ("xp99ms", "cross_p99_ms", "{:.2f}"),
    ("maxms", "max_ms", "{:.1f}"),
    ("connerr", "connection_errors", "{}"),
    ("gen%", "generator_cpu_pct", "{:.0f}"),
    ("genwait%", "generator_cpu_wait_pct", "{:.0f}"),
    ("srv%", "server_cpu_pct", "{:.0f}"),
    ("srvwait%", "server_cpu_wait_pct", "{:.0f}"),
    ("redis%", "redis_cpu_pct", "{:.0f}"),
    ("us/deliv", "server_cpu_us_per_delivery", "{:.2f}"),
    ("deliv/cpu-s", "server_capacity_per_s", "{:,}"),
    ("other%", "other_cpu_pct", "{:.0f}"),
    ("load", "load_avg_1m", "{:.2f}"),
    ("verdict", "verdict", "{}"),
)


class Printer:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.header_done = False
        self.noisy_noted = False
        self.saturated_noted = False

    def row(self, row: dict[str, Any]) -> None:
        if row.get("noisy") and not self.noisy_noted:
            self.noisy_noted = True
            self.note(
                "* = other load during the run: other processes used over 10% of the pinned "
                "servers' or generator's CPUs (other%), or (not pinned) the server or the "
                "generator waited for a CPU over 10% of it: wall-clock figures understate "
                "the server; us/deliv holds"
            )
        if row.get("server_saturated") and not self.saturated_noted:
            self.saturated_noted = True
            self.note(
                f"^ = the servers' CPU was busy over {SATURATED_PCT:.0f}% of the run (Redis "
                "and other processes on it included): no idle time was left, so us/deliv "
                "there is that CPU's time over the deliveries, not what a delivery costs; "
                "compare costs at a load below saturation"
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
            if key == "server_cpu_us_per_delivery" and row.get("server_saturated"):
                text += "^"  # the core was saturated: see the note
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
    pids: list[int]  # every process counted as "the server", Redis included when spawned
    redis_pids: list[int] = field(default_factory=list)  # also reported on their own
    # The CPUs the counted processes, and the generator, are pinned to (when known):
    # whatever else runs there is other load.
    server_cpus: list[int] = field(default_factory=list)
    generator_cpus: list[int] = field(default_factory=list)
    redis: RedisProcess | None = None

    def stop(self) -> None:
        """Stop what the bench started: the servers, then their Redis."""
        for server in self.servers:
            server.stop()
        if self.redis is not None:
            self.redis.stop()


def _sum(values: Sequence[float | int | None]) -> Any:
    """Sum, or None when any is unknown (or there are none)."""
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _measure(
    fleet: Fleet,
    target: Target,
    rate: float,
    duration: float,
    senders: range | None = None,
) -> dict[str, Any]:
    cpu0 = _sum([proc_cpu(pid) for pid in target.pids])
    wait0 = _sum([run_queue_wait(pid) for pid in target.pids])
    redis0 = _sum([proc_cpu(pid) for pid in target.redis_pids])
    busy_srv0 = cpu_busy(target.server_cpus) if target.server_cpus else None
    busy_gen0 = cpu_busy(target.generator_cpus) if target.generator_cpus else None
    own0 = sum(os.times()[:2])
    t0 = time.time()
    stats = fleet.run(rate, duration, senders)
    wall = time.time() - t0 - 0.3
    own1 = sum(os.times()[:2])
    busy_srv1 = cpu_busy(target.server_cpus) if target.server_cpus else None
    busy_gen1 = cpu_busy(target.generator_cpus) if target.generator_cpus else None
    # CPU seconds over the whole step (send and drain); shares are of the step's wall time.
    server_cpu = _delta(cpu0, _sum([proc_cpu(pid) for pid in target.pids]))
    server_wait = _delta(wait0, _sum([run_queue_wait(pid) for pid in target.pids]))
    redis_cpu = _delta(redis0, _sum([proc_cpu(pid) for pid in target.redis_pids]))
    # Other load: what ran on the pinned CPUs besides the servers (and Redis), and besides
    # the generator's workers and this process.
    other_srv = other_gen = None
    busy_srv = _delta(busy_srv0, busy_srv1)
    if busy_srv is not None and server_cpu is not None:
        other_srv = max(0.0, busy_srv - server_cpu)
    busy_gen = _delta(busy_gen0, busy_gen1)
    if busy_gen is not None:
        other_gen = max(0.0, busy_gen - sum(s.cpu for s in stats) - (own1 - own0))
    rss = _sum([proc_rss(pid) for pid in target.pids])
    return summarize(
        fleet.workload,
        rate,
        duration,
        stats,
        connect_errors=fleet.connect_errors,
        server_cpu=server_cpu,
        server_wait=server_wait,
        server_rss=rss,
        redis_cpu=redis_cpu,
        other_server_cpu=other_srv,
        other_generator_cpu=other_gen,
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
            if printer.as_json:  # the result, machine-readable (the table has the note)
                print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        fleet.close()


def run_idle(
    workload: Workload, target: Target, args: argparse.Namespace, printer: Printer
) -> None:
    if not target.pids:
        raise SystemExit("--idle needs --spawn or --server-pid to read the server's RSS")
    time.sleep(0.5)
    before = _sum([proc_rss(pid) for pid in target.pids]) or 0
    fleet = Fleet(target.url, workload, args)
    try:
        time.sleep(2.0)
        after = _sum([proc_rss(pid) for pid in target.pids]) or 0
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


def spawn_target(
    args: argparse.Namespace, printer: Printer, instances: int, with_redis: bool
) -> Target:
    """Start ``instances`` servers (and a private Redis they share, if ``with_redis``), all
    pinned to CPU 0 when there are other CPUs for the generator."""
    cpus = _cpus()
    cpu = 0 if len(cpus) > 1 else None
    where = " pinned to CPU 0" if cpu is not None else ""
    extra = ["--max-connections", "0", *args.server_arg]
    redis: RedisProcess | None = None
    if with_redis:
        redis = RedisProcess(cpu, args.redis_server)
        extra += ["--redis-url", redis.url]
        printer.note(f"spawned redis-server pid {redis.pid} at {redis.url}{where}")
    servers: list[ServerProcess] = []
    target = Target(url="", servers=servers, pids=[], redis=redis)
    try:
        # Started together, then waited for: they boot in parallel.
        for _ in range(max(1, instances)):
            servers.append(ServerProcess(extra, cpu, wait=False, src=args.server_src))
        for server in servers:
            server.wait_listening()
        if any(a.startswith("--redis-url") for a in extra):
            for server in servers:
                server.wait_ready()
    except BaseException:
        target.stop()
        raise
    for server in servers:
        printer.note(f"spawned server pid {server.pid} at {server.url}{where}")
    target.url = ",".join(s.url for s in servers)
    target.pids = [s.pid for s in servers] + ([redis.pid] if redis else [])
    target.redis_pids = [redis.pid] if redis else []
    if cpu is not None:
        target.server_cpus = [cpu]
        target.generator_cpus = _generator_cpus(args)
    return target


def main(args: argparse.Namespace) -> int:
    raise_file_limit()
    _cpus()  # before this process moves to the generator's CPUs
    printer = Printer(args.json)
    if args.quick:
        args.spawn = True
    if args.spawn_redis and not args.spawn:
        raise SystemExit("--spawn-redis goes with --spawn")
    if args.server_src:
        try:
            args.server_src = package_path(args.server_src)
        except ValueError as exc:
            raise SystemExit(f"--server-src {exc}") from None
    if args.spawn_redis and any(a.startswith("--redis-url") for a in args.server_arg):
        raise SystemExit("--spawn-redis gives the servers their --redis-url: drop the other")
    if args.spawn and len(_cpus()) > 1:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, _generator_cpus(args))
    printer.note(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    if args.quick:
        return _quick(args, printer)
    if args.spawn:
        target = spawn_target(args, printer, args.instances, args.spawn_redis)
        target.pids += args.server_pid
        if args.server_pid:  # not spawned here: where they run is not known
            target.server_cpus = []
    else:
        target = Target(url=args.url or DEFAULT_URL, servers=[], pids=list(args.server_pid))
    try:
        workload = Workload(args.docs or 100, args.users or 10, args.payload)
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
        target.stop()


def _quick(args: argparse.Namespace, printer: Printer) -> int:
    """``make bench``: one instance at three loads, then two instances + Redis at one."""
    duration = min(args.duration, 4.0)
    plans: list[tuple[int, bool, list[tuple[Workload, float]]]] = [
        (
            1,
            False,
            [
                (Workload(100, 10), 25_000.0),
                (Workload(100, 10), 100_000.0),
                (Workload(1, 100), 150_000.0),
            ],
        ),
        (2, True, [(Workload(100, 10), 25_000.0)]),
    ]
    for instances, with_redis, runs in plans:
        if with_redis:
            printer.note("two instances + a private Redis, all on the servers' CPU")
        target = spawn_target(args, printer, instances, with_redis)
        try:
            for workload, deliveries in runs:
                run_workload(
                    workload,
                    target,
                    args,
                    printer,
                    rate=workload.rate_for(deliveries),
                    duration=duration,
                )
        finally:
            target.stop()
    return 0


@functools.cache
def _cpus() -> list[int]:
    """The CPUs the bench may use, as at its start (before it pins itself)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))
