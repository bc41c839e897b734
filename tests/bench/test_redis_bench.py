"""The bench's multi-instance figures, against real instances on a real private Redis.

Cross-instance deliveries are told apart exactly (crafted sends, known routes);
``--spawn-redis`` starts, counts and stops its Redis; ``--targeting`` counts events,
deliveries and Redis's output per phase, with the servers' own frame counters as the
independent check. Tiny loads: these test the counting, never the speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cpc_signaling.bench.processes import RedisProcess, ServerProcess, package_path
from cpc_signaling.bench.runner import Workload, summarize
from cpc_signaling.bench.targeting import route
from cpc_signaling.bench.worker import Layout, Worker

from ..helpers import TIMEOUT, new_id
from .test_bench import _until


async def _cli(*args: str) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cpc_signaling",
        "bench",
        *args,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 24 * TIMEOUT)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


async def _cross(urls: str, route: list[int] | None) -> tuple[int, int, dict[str, Any]]:
    """Connection 0 sends 4, connection 1 sends 3 (one document of 3 members):
    (deliveries, cross-instance deliveries, the summary row)."""
    layout = Layout(urls, [new_id()], [new_id() for _ in range(3)], [None] * 3, 3, route=route)
    worker = Worker(layout, [0, 1, 2])
    assert (await worker.connect())[0] == 0
    try:
        seq0 = worker.begin_step()
        worker.latencies_on = True
        stamp = worker.clock.stamp(time.time())
        for _ in range(4):
            worker.conns[0].send_next(stamp)
        for _ in range(3):
            worker.conns[1].send_next(stamp)
        await _until(lambda: worker.stats.delivered >= 14)  # 4 x 2 + 3 x 2
        await asyncio.sleep(0.1)  # nothing more may come
        stats = worker.end_step(seq0)
        row = summarize(Workload(1, 3), 0.0, 1.0, [stats])
        return len(stats.latencies), len(stats.cross_latencies), row
    finally:
        worker.close()


def _two_instances() -> tuple[RedisProcess, list[ServerProcess]]:
    """A private Redis and two instances on it, ready (the bench's own helpers)."""
    redis = RedisProcess(None)
    servers = [ServerProcess(["--redis-url", redis.url], None, wait=False) for _ in range(2)]
    try:
        for server in servers:
            server.wait_listening()
            server.wait_ready()
    except BaseException:
        for server in servers:
            server.stop()
        redis.stop()
        raise
    return redis, servers


async def test_cross_instance_deliveries_are_told_apart() -> None:
    redis, (a, b) = await asyncio.to_thread(_two_instances)
    try:
        urls = f"{a.url},{b.url}"
        # Round-robin: members 0 and 2 on a, 1 on b. 0's 4 reach 1 across, 2 on a;
        # 1's 3 reach 0 and 2, both across: 4 + 6 cross of 14.
        total, cross, row = await _cross(urls, None)
        assert (total, cross) == (14, 10)
        assert row["cross_deliveries"] == 10
        assert 0 < row["cross_p50_ms"] <= row["cross_p99_ms"] < 5000
        assert row["lost"] == 0 and row["delivered"] == 14
        # A route: 0 and 1 on a, 2 on b. 0's 4 and 1's 3 each cross once (to 2).
        total, cross, row = await _cross(urls, [0, 0, 1])
        assert (total, cross) == (14, 7)
        # One instance: nothing is cross-instance.
        total, cross, row = await _cross(a.url, None)
        assert (total, cross) == (14, 0)
        assert row["cross_deliveries"] == 0 and row["cross_p99_ms"] is None
    finally:
        for server in (a, b):
            server.stop()
        redis.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_spawn_redis_starts_counts_and_stops_its_redis() -> None:
    lines = await _cli(
        "--spawn", "--spawn-redis", "--instances", "2",
        "--docs", "2", "--users", "3", "--rate", "20", "--duration", "1",
    )  # fmt: skip
    notes = " ".join(line["note"] for line in lines if "note" in line)
    spawned = re.search(r"spawned redis-server pid (\d+)", notes)
    assert spawned, notes
    redis_pid = int(spawned.group(1))
    server_pids = [int(p) for p in re.findall(r"spawned server pid (\d+)", notes)]
    assert len(server_pids) == 2
    (row,) = [line for line in lines if "workload" in line]
    assert row["delivered"] == row["expected"] == 2 * row["sent"] > 0
    assert (row["lost"], row["duplicated"], row["reordered"], row["stray"]) == (0, 0, 0, 0)
    assert row["connection_errors"] == row["error_frames"] == 0
    # Members go round-robin over two instances: some deliveries cross, not all.
    assert 0 < row["cross_deliveries"] < row["delivered"]
    # Redis's CPU is read (and counted in the servers' figure).
    assert row["redis_cpu_pct"] is not None
    assert row["server_cpu_us_per_delivery"] is not None
    assert not any(_alive(pid) for pid in [redis_pid, *server_pids])


def test_targeting_routes_own_documents_to_one_instance() -> None:
    # 2 instances x 1 own document x 3 members, then the shared document over both.
    assert route(2, 1, 3) == [0, 0, 0, 1, 1, 1, 0, 1, 0]
    own = route(8, 4, 8)
    assert len(own) == (8 * 4 + 1) * 8
    assert all(own[g] == g // 32 for g in range(8 * 4 * 8))
    assert sorted(own[-8:]) == list(range(8))  # the shared one: a member on every instance


async def test_targeting_counts_events_deliveries_and_redis_output() -> None:
    lines = await _cli(
        "--targeting", "2", "--docs", "1", "--users", "3", "--events", "60", "--duration", "0.5"
    )
    rows = {line["phase"]: line for line in lines if line.get("targeting")}
    assert set(rows) == {"own", "shared"}
    for phase, row in rows.items():
        assert row["instances"] == 2
        assert row["senders"] == 6 if phase == "own" else 3
        assert 50 <= row["sent"] <= 70  # 60 events at the run's rate, give or take a tick
        # Each event reaches the 2 other members of its document, all of them received.
        assert row["delivered"] == row["expected"] == 2 * row["sent"]
        assert (row["lost"], row["duplicated"], row["stray"]) == (0, 0, 0)
        # The servers' own count of the frames they sent agrees with the generator's.
        assert row["server_frames_out"] == row["delivered"]
        net = row["redis_net_output_bytes"]
        assert 0 < net <= row["redis_output_bytes"]
        # ``net`` is reported rounded to a byte (the idle output subtracted is a rate):
        # the per-event figures come from the unrounded value, so within half a byte.
        assert abs(row["redis_bytes_per_event"] - net / row["sent"]) <= 0.5 / row["sent"] + 0.05
        assert (
            abs(row["redis_bytes_per_delivery"] - net / row["delivered"])
            <= 0.5 / row["delivered"] + 0.05
        )
    # A shared event must reach the other instance through Redis; a private one never
    # needs more than its own document's follower does.
    assert rows["shared"]["redis_bytes_per_event"] > rows["own"]["redis_bytes_per_event"]


def test_server_src_finds_the_package_or_refuses(tmp_path: Path) -> None:
    """--server-src DIR: a checkout's root (DIR/src/cpc_signaling) or its src/ both
    run that tree; a directory without the package is refused. Before, a checkout's
    root went on PYTHONPATH as it was, found no package there, and the servers
    silently ran the installed one: a "before and after" of the same code."""
    checkout = tmp_path / "checkout"
    package = checkout / "src" / "cpc_signaling"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    assert package_path(str(checkout)) == str(checkout / "src")
    assert package_path(str(checkout / "src")) == str(checkout / "src")
    with pytest.raises(ValueError, match="no cpc_signaling package"):
        package_path(str(tmp_path))
