"""examples/comment_store.py: the SQLite comment store behind the event webhook."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import aiohttp

from cpc_signaling.client import Client
from cpc_signaling.protocol import Annotation, Comment, JoinDocument, Position, encode
from cpc_signaling.server.hooks import sign
from cpc_signaling.server.hooks.events import encode_batch, make_event

from ..helpers import UNIT, ServerProcess, new_id, spawn_server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "comment_store.py"
SECRET = "example-secret"
API_KEY = "an-api-key-of-at-least-32-characters-for-tests"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("comment_store_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rows(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT document_id, type, message FROM messages ORDER BY seq"))


async def test_the_receiver_stores_signed_comments_and_annotations_once(tmp_path: Path) -> None:
    example = load_example()
    db = tmp_path / "comments.db"
    store = example.CommentStore(str(db))
    doc, user = new_id(), new_id()
    position = Position(line=1, column=2)
    comment = encode(Comment(doc, user, position, "looks good", "2026-12-01T10:00:00Z"))
    note = encode(Annotation(doc, user, position, "typo here", "2026-12-01T10:00:01Z"))
    events = [
        make_event("join", doc, user, encode(JoinDocument(doc, user)), "client"),
        make_event("comment", doc, user, comment, "client"),
        make_event("annotation", doc, user, note, "client"),
    ]
    body = encode_batch(events, "instance")
    async with (
        example.running(store, secret=SECRET) as app,
        aiohttp.ClientSession() as http,
    ):

        async def post(data: bytes, signature: str | None) -> int:
            headers = {"Content-Type": "application/json"}
            if signature is not None:
                headers["X-CPC-Signature"] = signature
            async with http.post(app.url, data=data, headers=headers) as response:
                return response.status

        assert await post(body, None) == 401
        assert await post(body, sign("wrong secret", body)) == 401
        assert await post(body, sign(SECRET, body, int(time.time()) - 600)) == 401  # a replay
        assert rows(db) == []
        assert await post(body, sign(SECRET, body)) == 204
        assert await post(body, sign(SECRET, body)) == 204  # the server retried it
        # The copy that comes back when the example re-publishes: a new event id.
        again = encode_batch([make_event("comment", doc, user, comment, "api")], "instance")
        assert await post(again, sign(SECRET, again)) == 204
        assert await post(b"[1, 2]", sign(SECRET, b"[1, 2]")) == 400
    assert rows(db) == [(doc, "comment", comment.decode()), (doc, "annotation", note.decode())]
    assert store.messages() == [(doc, comment.decode()), (doc, note.decode())]


class ExampleProcess:
    """``python examples/comment_store.py ...`` as a real process; its log lines kept."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output
            self._changed.notify_all()

    async def until(self, predicate: Callable[[list[str]], bool], timeout: float) -> None:
        """Wait until ``predicate(lines so far)`` holds (fails at the timeout or the end)."""

        def wait() -> bool:
            with self._changed:
                self._changed.wait_for(lambda: predicate(self.lines) or "" in self.lines, timeout)
                return predicate(self.lines)

        held = await asyncio.to_thread(wait)
        assert held, "the example's output:\n" + "".join(self.lines)

    async def line(self, pattern: str, timeout: float = 15 * UNIT) -> re.Match[str]:
        """The first log line matching ``pattern`` (waits for it)."""
        await self.until(lambda lines: any(re.search(pattern, x) for x in lines), timeout)
        return next(m for x in self.lines if (m := re.search(pattern, x)))

    def received(self) -> int:
        """Events received so far (over every batch)."""
        return sum(int(m[1]) for x in self.lines if (m := re.search(r"received (\d+) ev", x)))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_pair(db: Path) -> tuple[ExampleProcess, ServerProcess]:
    """The example (receiver + re-publish on start), then a fresh server process whose
    event webhook is the example and whose HTTP API the example re-publishes to."""
    port = free_port()
    example = ExampleProcess(
        [
            *("--db", str(db), "--port", "0", "--webhook-secret", SECRET),
            *("--server", f"http://127.0.0.1:{port}", "--api-key", API_KEY, "--wait", "30"),
        ]
    )
    try:
        url = (await example.line(r"listening on (http://\S+)"))[1]
        server = await spawn_server(
            [
                *("--port", str(port), "--api-key", API_KEY, "--webhook-secret", SECRET),
                *("--event-webhook", url),
            ]
        )
    except BaseException:
        example.proc.kill()
        raise
    return example, server


async def test_comments_outlive_the_server_through_the_example(tmp_path: Path) -> None:
    """Comments posted by a client reach SQLite through the event webhook; a fresh
    server process (empty memory) gets them back from the example when it starts, and
    a late joiner sees them in its snapshot, in order, once each."""
    db = tmp_path / "comments.db"
    doc = new_id()
    example, server = await start_pair(db)
    try:
        await example.line(r"re-published 0 message\(s\)")  # nothing stored yet
        async with Client(server.url, new_id(), reconnect=False) as alice:
            await alice.join(doc)
            await alice.comment(doc, 1, 0, "first")
            await alice.annotate(doc, 2, 0, "a note")
            await alice.comment(doc, 3, 0, "second")
            async with Client(server.url, new_id(), reconnect=False) as bob:
                originals = [m for m in await bob.join(doc) if isinstance(m, Comment | Annotation)]
        assert [m.content for m in originals] == ["first", "a note", "second"]
        assert await asyncio.to_thread(server.stop) == 0
        assert len(rows(db)) == 3
    finally:
        server.kill()
        assert example.stop() == 0

    # A new server process: empty memory. The example, started again, gives it all back.
    example, server = await start_pair(db)
    try:
        await example.line(r"re-published 3 message\(s\)")
        async with Client(server.url, new_id(), reconnect=False) as late:
            snapshot = await late.join(doc)
        restored = [m for m in snapshot if isinstance(m, Comment | Annotation)]
        assert restored == originals
        # The re-published copies came back as events (with the late joiner's join and
        # leave: 5) and were not stored twice.
        await example.until(lambda lines: example.received() >= 5, 15 * UNIT)
        assert len(rows(db)) == 3
        assert not re.search(r"stored [1-9]", "".join(example.lines))
    finally:
        server.stop()
        example.stop()
