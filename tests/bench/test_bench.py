"""The load generator counts what really happened, against a real server.

Loss, duplicates and reordering are produced at the source: a bench connection
sends a crafted sequence (a gap, a repeat, a swap) that the server relays
faithfully, so every receiver sees them. The server's own frame counter
(``cpc_messages_out_total``) is the independent check of ``delivered``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import sys
import time
import uuid
from collections.abc import Callable

import aiohttp
import pytest

from cpc_signaling.bench.runner import Printer, Workload, summarize, verdict
from cpc_signaling.bench.worker import Clock, Layout, Worker, client_frame

from ..helpers import TIMEOUT, RunningServer, spawn_server


def _layout(url: str, docs: int, users: int) -> Layout:
    n = docs * users
    return Layout(
        url,
        [str(uuid.uuid4()) for _ in range(docs)],
        [str(uuid.uuid4()) for _ in range(n)],
        [None] * n,
        users,
    )


async def _until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll the worker's counters (plain attributes: there is nothing to await on)."""
    deadline = time.monotonic() + timeout
    for _ in itertools.count():
        if predicate():
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _frames_out(server: RunningServer, kind: str) -> float:
    server.service.flush_tally()
    return float(server.service.metrics.messages_out.labels(kind)._value.get())


async def test_counts_loss_duplicates_and_reordering(server: RunningServer) -> None:
    worker = Worker(_layout(server.url, 1, 3), [0, 1, 2])
    failed, reasons = await worker.connect()
    assert (failed, reasons) == (0, [])
    try:
        a, b, _c = worker.conns
        before = _frames_out(server, "CursorUpdate")
        seq0 = worker.begin_step()
        worker.latencies_on = True
        stamp = worker.clock.stamp(time.time())
        # a: 0 1 3 2 4 4 6 -> one swap (3/2), one repeat (4), one gap (5 never sent).
        for seq in (0, 1, 3, 2, 4, 4, 6):
            a.send_seq(seq, stamp)
        a.seq = 7  # a's sequence claims 7 messages (0..6): 5 is lost
        for _ in range(5):  # b: 0..4, clean
            b.send_next(stamp)
        # c sends nothing. Each frame of a and b reaches the 2 others: 24 deliveries.
        await _until(lambda: worker.stats.delivered >= 24)
        await asyncio.sleep(0.1)  # nothing more may come
        stats = worker.end_step(seq0)
        row = summarize(Workload(1, 3), 0.0, 1.0, [stats])
    finally:
        worker.close()
    assert row["sent"] == 12
    assert row["delivered"] == 24
    assert row["expected"] == 24  # a 7 to b and c, b 5 to a and c
    assert row["lost"] == 2  # a's 5, at b and at c
    assert row["duplicated"] == 2  # a's second 4, at b and at c
    assert row["reordered"] == 2  # a's 2 after its 3, at b and at c
    assert row["stray"] == 0
    assert row["error_frames"] == 0
    assert row["connection_errors"] == 0
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"] < 5000
    assert verdict(row, 50.0) == "loss"
    assert _frames_out(server, "CursorUpdate") - before == 24


async def test_counts_a_clean_run_and_error_frames(server: RunningServer) -> None:
    worker = Worker(_layout(server.url, 2, 2), [0, 1, 2, 3])
    assert (await worker.connect())[0] == 0
    try:
        stats = await worker.run_step(rate=50.0, start_at=time.time(), duration=0.4)
        row = summarize(Workload(2, 2), 50.0, 0.4, [stats])
        assert row["sent"] > 0
        assert row["delivered"] == row["expected"] == row["sent"]  # one other member each
        assert (row["lost"], row["duplicated"], row["reordered"]) == (0, 0, 0)
        assert verdict(row, 10_000.0) in ("ok", "gen-saturated")
        # A message the server refuses comes back as an Error frame, and is counted.
        seq0 = worker.begin_step()
        transport = worker.conns[0].transport
        assert transport is not None
        transport.write(client_frame(b'{"CursorUpdate":{}}'))
        await _until(lambda: worker.stats.errors >= 1)
        assert worker.end_step(seq0).errors == 1
    finally:
        worker.close()


def test_clock_round_trip_with_microseconds_across_midnight() -> None:
    clock = Clock()
    midnight = dt.datetime(2026, 11, 26, tzinfo=dt.UTC).timestamp()
    for t in (midnight - 0.000123, midnight + 0.5, midnight + 59.999, 1764115200.123456):
        stamp = clock.stamp(t)
        assert len(stamp) == 27 and stamp.endswith("Z"), stamp
        assert dt.datetime.fromisoformat(stamp).timestamp() == clock.parse(stamp.encode())
        assert abs(clock.parse(stamp.encode()) - t) < 2e-6
    # Another writer's timestamp (an offset, no microseconds) still parses.
    assert clock.parse(b"2026-11-25T23:00:00+01:00") == midnight - 7200


def test_table_has_every_figure() -> None:
    row = summarize(Workload(1, 2), 1.0, 1.0, [])
    row["verdict"] = "ok"
    printer = Printer(as_json=False)
    printer.row(row)  # prints; the point is that it formats every column without error


def test_a_saturated_core_is_marked(capsys: pytest.CaptureFixture[str]) -> None:
    """Pinned servers whose CPU had no idle time left: their CPU per delivery is the
    core's time over the deliveries, and the row says so (JSON and table)."""
    busy = summarize(Workload(1, 2), 1.0, 5.0, [], server_cpu=4.4, other_server_cpu=0.3)
    assert busy["server_core_pct"] == 94.0
    assert busy["server_saturated"] is True
    calm = summarize(Workload(1, 2), 1.0, 5.0, [], server_cpu=2.0, other_server_cpu=0.1)
    assert (calm["server_core_pct"], calm["server_saturated"]) == (42.0, False)
    # Not pinned (a server the bench did not spawn): how busy its CPU was is unknown.
    free = summarize(Workload(1, 2), 1.0, 5.0, [], server_cpu=4.9)
    assert (free["server_core_pct"], free["server_saturated"]) == (None, False)
    printer = Printer(as_json=False)
    for row in (calm, busy, busy):
        row["verdict"] = "ok"
        printer.row(row)
    lines = capsys.readouterr().out.splitlines()
    notes = [line for line in lines if line.startswith("# ^")]
    assert len(notes) == 1, lines  # the note once, before the first marked row
    rows = [line for line in lines if line.startswith("1x2")]
    assert ["^" in line for line in rows] == [False, True, True]


async def test_cli_against_a_real_server_process() -> None:
    server = await spawn_server()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cpc_signaling",
            "bench",
            "--url",
            server.url,
            "--docs",
            "2",
            "--users",
            "3",
            "--rate",
            "20",
            "--duration",
            "1",
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        rows = [json.loads(line) for line in out.decode().splitlines()]
        (row,) = [r for r in rows if "workload" in r]
        assert row["workload"] == "2x3 cursor"
        assert row["sent"] >= 60  # 6 users x 20/s x 1 s, give or take a tick
        assert row["delivered"] == row["expected"] == 2 * row["sent"]
        assert (row["lost"], row["duplicated"], row["reordered"]) == (0, 0, 0)
        assert row["connection_errors"] == 0 and row["error_frames"] == 0
        assert row["generator_cpu_pct"] > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.http + "/metrics") as resp,
        ):
            text = await resp.text()
        out_line = next(
            line
            for line in text.splitlines()
            if line.startswith('cpc_messages_out_total{type="CursorUpdate"}')
        )
        assert float(out_line.split()[-1]) == row["delivered"]
    finally:
        assert server.stop() == 0
