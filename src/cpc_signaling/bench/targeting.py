"""``cpc-signaling bench --targeting 2,4,8``: does Redis's output follow the documents' followers?

For each K: a private ``redis-server`` and K server processes on it. Each instance
has its own ``--docs`` documents of ``--users`` members, every member connected to
that instance (no other instance follows them), and one more document is shared by
all: its members are spread round-robin over the K instances. Two phases, each
``--events`` cursor updates over ``--duration`` seconds:

* **own**: only the members of the instances' own documents send;
* **shared**: only the members of the shared document send.

Redis's ``INFO stats`` is read before and after each phase: its
``total_net_output_bytes`` delta, less the idle output measured first (heartbeats,
the INFO replies), divided by the events sent and by the messages delivered. The
generator counts sent and delivered exactly (as in every bench run) and the servers'
own ``cpc_messages_out_total`` is read as the independent check of delivered. Nothing
here depends on how the engine lays out its keys or channels.

What to expect: on the own documents the bytes per event stay flat as K grows (an
instance that follows no document of the event must get nothing); on the shared
document they grow with K, since K instances each need the event once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from .processes import RedisProcess, ServerProcess, proc_cpu
from .runner import Fleet, Printer, Workload, summarize

IDLE_WINDOW = 2.0  # seconds of idle output measured per K (one default heartbeat interval)

_COLUMNS = (
    ("K", "instances", "{}"),
    ("phase", "phase", "{}"),
    ("senders", "senders", "{:,}"),
    ("events", "sent", "{:,}"),
    ("delivered", "delivered", "{:,}"),
    ("lost", "lost", "{:,}"),
    ("srv-out", "server_frames_out", "{:,.0f}"),
    ("redis-out B", "redis_output_bytes", "{:,}"),
    ("idle B/s", "redis_idle_bytes_per_s", "{:,.0f}"),
    ("B/event", "redis_bytes_per_event", "{:,.1f}"),
    ("B/deliv", "redis_bytes_per_delivery", "{:,.1f}"),
    ("cmds/event", "redis_commands_per_event", "{:.3f}"),
    ("redis-us/event", "redis_cpu_us_per_event", "{:.2f}"),
    ("p99ms", "p99_ms", "{:.2f}"),
    ("load", "load_avg_1m", "{:.2f}"),
)


def route(instances: int, docs: int, users: int) -> list[int]:
    """The instance of each connection: document d < instances*docs belongs to instance
    d // docs (all its members there); the last document's members go round-robin."""
    own = instances * docs
    return [
        (g // users) // docs if g // users < own else (g % users) % instances
        for g in range((own + 1) * users)
    ]


def run_targeting(args: argparse.Namespace, printer: Printer) -> int:
    counts = [int(k) for k in str(args.targeting).split(",") if k.strip()]
    docs = args.docs or 4
    users = args.users or 8
    if not counts or min(counts) < 1:
        raise SystemExit("--targeting takes instance counts, e.g. 2,4,8")
    if users < max(counts):
        raise SystemExit(
            f"--users {users} < {max(counts)} instances: the shared document needs a member "
            "on every instance"
        )
    printer.note(
        f"targeting: per instance {docs} own documents x {users} users, plus 1 shared "
        f"document of {users} users over all instances; {args.events} events per phase in "
        f"{args.duration} s; machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}"
    )
    rows: list[dict[str, Any]] = []
    for k in counts:
        rows += measure(k, docs, users, args, printer)
    for phase in ("own", "shared"):
        figures = ", ".join(
            f"K={r['instances']}: {r['redis_bytes_per_event']:,.1f} B/event, "
            f"{r['redis_bytes_per_delivery']:,.1f} B/delivery"
            for r in rows
            if r["phase"] == phase and r["redis_bytes_per_event"] is not None
        )
        printer.note(f"{phase} documents: {figures}")
    return 0


def measure(
    k: int, docs: int, users: int, args: argparse.Namespace, printer: Printer
) -> list[dict[str, Any]]:
    """Both phases with ``k`` instances on a fresh private Redis; one row per phase."""
    redis = RedisProcess(None, args.redis_server)
    servers: list[ServerProcess] = []
    try:
        extra = [
            "--redis-url", redis.url,
            "--max-connections", "0",
            "--rate-limit", "0",
            *args.server_arg,
        ]  # fmt: skip
        servers = [ServerProcess(extra, None, wait=False, src=args.server_src) for _ in range(k)]
        for server in servers:
            server.wait_listening()
        for server in servers:
            server.wait_ready()
        workload = Workload(k * docs + 1, users, args.payload)
        fleet = Fleet(",".join(s.url for s in servers), workload, args, route=route(k, docs, users))
        try:
            if fleet.connect_errors:
                raise RuntimeError(
                    f"{fleet.connect_errors} connections failed: {'; '.join(fleet.reasons)}"
                )
            # Idle output: heartbeats and the INFO replies, subtracted from each phase.
            time.sleep(0.5)  # the joins' traffic is over
            before, t0 = redis.stats(), time.monotonic()
            time.sleep(IDLE_WINDOW)
            after, t1 = redis.stats(), time.monotonic()
            idle = {
                key: (after[key] - before[key] - (key == "total_commands_processed")) / (t1 - t0)
                for key in ("total_net_output_bytes", "total_commands_processed")
            }
            own = range(0, k * docs * users)
            shared = range(k * docs * users, workload.conns)
            rows = []
            for phase, senders in (("own", own), ("shared", shared)):
                row = phase_row(fleet, redis, servers, senders, args, idle)
                row.update(instances=k, phase=phase)
                print_row(printer, row)
                rows.append(row)
            return rows
        finally:
            fleet.close()
    except BaseException:
        for n, server in enumerate(servers):
            log = "".join(server.lines[-20:])
            print(f"--- instance {n} log (last 20 lines) ---\n{log}", file=sys.stderr)
        raise
    finally:
        for server in servers:
            server.stop()
        redis.stop()


def _delta_cpu(pid: int, before: float | None) -> float | None:
    after = proc_cpu(pid)
    return None if before is None or after is None else after - before


def _frames_out(servers: list[ServerProcess]) -> float:
    return sum(s.counter("cpc_messages_out_total", '"CursorUpdate"') for s in servers)


def phase_row(
    fleet: Fleet,
    redis: RedisProcess,
    servers: list[ServerProcess],
    senders: range,
    args: argparse.Namespace,
    idle: dict[str, float],
) -> dict[str, Any]:
    """One phase: only ``senders`` send; Redis's output and the counts around it."""
    rate = args.events / (len(senders) * args.duration)
    frames0 = _frames_out(servers)
    calls0 = redis.command_stats()
    cpu0 = proc_cpu(redis.pid)
    info0, t0 = redis.stats(), time.monotonic()
    stats = fleet.run(rate, args.duration, senders)
    info1, t1 = redis.stats(), time.monotonic()
    calls1 = redis.command_stats()
    frames1 = _frames_out(servers)
    row = summarize(fleet.workload, rate, args.duration, stats)
    raw = info1["total_net_output_bytes"] - info0["total_net_output_bytes"]
    # Less the idle output (and commands) over the same time; the first INFO is a command.
    net = max(0.0, raw - idle["total_net_output_bytes"] * (t1 - t0))
    commands = info1["total_commands_processed"] - info0["total_commands_processed"] - 1
    commands = max(0.0, commands - idle["total_commands_processed"] * (t1 - t0))
    sent, delivered = row["sent"], row["delivered"]
    row.update(
        senders=len(senders),
        server_frames_out=frames1 - frames0,
        redis_output_bytes=raw,
        redis_idle_bytes_per_s=round(idle["total_net_output_bytes"], 1),
        redis_idle_commands_per_s=round(idle["total_commands_processed"], 1),
        redis_net_output_bytes=round(net),
        redis_input_bytes=info1["total_net_input_bytes"] - info0["total_net_input_bytes"],
        redis_bytes_per_event=round(net / sent, 1) if sent else None,
        redis_bytes_per_delivery=round(net / delivered, 1) if delivered else None,
        redis_commands_per_event=round(commands / sent, 3) if sent else None,
        phase_wall_s=round(t1 - t0, 2),
    )
    # Which commands per event (a script's own calls included; so are heartbeats and
    # INFO), and Redis's CPU time per event.
    if sent:
        row["redis_calls_per_event"] = {
            name: round((n - calls0.get(name, (0, 0))[0]) / sent, 3)
            for name, (n, _) in sorted(calls1.items())
            if n != calls0.get(name, (0, 0))[0]
        }
        cpu = _delta_cpu(redis.pid, cpu0)
        row["redis_cpu_us_per_event"] = None if cpu is None else round(1e6 * cpu / sent, 2)
    return row


def print_row(printer: Printer, row: dict[str, Any]) -> None:
    if printer.as_json:
        print(json.dumps({"targeting": True, **row}), flush=True)
        return
    if not printer.header_done:
        print(" ".join(t.rjust(max(len(t), 8)) for t, _, _ in _COLUMNS), flush=True)
        printer.header_done = True
    cells = []
    for title, key, fmt in _COLUMNS:
        value = row.get(key)
        cells.append(("-" if value is None else fmt.format(value)).rjust(max(len(title), 8)))
    print(" ".join(cells), flush=True)
