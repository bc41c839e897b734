"""Keep comments and annotations for good: an event-webhook receiver that stores them in
SQLite, and gives them back to a fresh signaling service on start.

The signaling service keeps annotations and comments in memory (or in Redis, for
``--document-ttl`` after a document's last activity). This app makes them
outlive both: the service sends every annotation and comment to its event
webhook; the app stores them; when the app starts, it re-publishes what it
stored through the service's HTTP API, oldest first, so a restarted service
(new process, empty memory, or a Redis that lost them) has them again and late
joiners see them in their join snapshot.

Run it next to the server (both get the same secret; the server also needs the
API key, which the app uses to re-publish)::

    python examples/comment_store.py --db comments.db --port 8080 \\
        --server http://127.0.0.1:8765 --api-key KEY --webhook-secret SECRET

    cpc-signaling serve --api-key KEY --webhook-secret SECRET \\
        --event-webhook http://127.0.0.1:8080/events

Choices (docs/hooks.md explains them):

* A request whose ``X-CPC-Signature`` does not verify (or is older than five
  minutes) is refused with 401 and stores nothing.
* Events are stored once: by their ``id`` (a delivery the server retried) and by
  (document, message) (the copy that comes back as an event when the app
  re-publishes). Two byte-identical messages in a document (same user, position,
  content and timestamp) are therefore kept once.
* Re-publishing is meant for a service that lost its messages (the app starts
  with, or after, the service). Re-publishing into a service that still holds
  them shows them twice to later joiners: start with ``--no-republish`` then.
* A failure to store answers 500: the server retries the batch later.

Tested end to end by tests/hooks/test_example.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp
import msgspec
from aiohttp import web

from cpc_signaling.server.hooks import SIGNATURE_HEADER, verify_signature

log = logging.getLogger("comment_store")

STORED_TYPES = ("annotation", "comment")
MAX_BODY_BYTES = 8 << 20  # a batch of 100 events of 10,000 characters fits easily


class Event(msgspec.Struct):
    """The fields of an event this app uses (others are ignored)."""

    id: str
    type: str
    document_id: str
    user_id: str
    time: str
    message: msgspec.Raw


class Batch(msgspec.Struct):
    events: list[Event]


_decode_batch = msgspec.json.Decoder(Batch).decode

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    document_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    type TEXT NOT NULL,
    time TEXT NOT NULL,
    message TEXT NOT NULL,
    UNIQUE (document_id, message)
);
"""


class CommentStore:
    """The SQLite file: one row per annotation or comment."""

    def __init__(self, path: str) -> None:
        self.path = path
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def add(self, events: Sequence[Event]) -> int:
        """Store the annotations and comments among ``events``; returns how many were new."""
        rows = [
            (e.id, e.document_id, e.user_id, e.type, e.time, bytes(e.message).decode())
            for e in events
            if e.type in STORED_TYPES
        ]
        if not rows:
            return 0
        with contextlib.closing(self._connect()) as db, db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO messages "
                "(event_id, document_id, user_id, type, time, message) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            return db.total_changes - before

    def messages(self) -> list[tuple[str, str]]:
        """(document_id, message JSON) of everything stored, oldest first."""
        with contextlib.closing(self._connect()) as db:
            return list(db.execute("SELECT document_id, message FROM messages ORDER BY time, seq"))


def create_receiver(store: CommentStore, secret: str | None) -> web.Application:
    """The aiohttp app answering the event webhook at ``POST /events``."""

    async def events(request: web.Request) -> web.Response:
        body = await request.read()
        if secret is not None and not verify_signature(
            secret, body, request.headers.get(SIGNATURE_HEADER)
        ):
            log.warning("refused a request with a missing, wrong or stale signature")
            return web.Response(status=401, text="bad signature\n")
        try:
            batch = _decode_batch(body)
        except msgspec.DecodeError as exc:
            return web.Response(status=400, text=f"not an event batch: {exc}\n")
        try:
            added = await asyncio.to_thread(store.add, batch.events)
        except sqlite3.Error as exc:
            log.error("could not store %d event(s): %s", len(batch.events), exc)
            return web.Response(status=500, text="storage failed\n")  # the server retries
        log.info("received %d event(s), stored %d new message(s)", len(batch.events), added)
        return web.Response(status=204)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/events", events)
    return app


async def wait_ready(http: aiohttp.ClientSession, server: str, wait: float) -> None:
    """Wait (up to ``wait`` seconds) until the signaling server answers /readyz with 200."""
    delay = 0.1
    async with asyncio.timeout(wait):
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"{server}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def republish(store: CommentStore, server: str, api_key: str, *, wait: float = 60.0) -> int:
    """POST every stored message to ``server``'s HTTP API, oldest first; returns how many
    the server took. A message it refuses (4xx) is logged and skipped."""
    stored = await asyncio.to_thread(store.messages)
    published = 0
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        await wait_ready(http, server, wait)
        for document_id, message in stored:
            url = f"{server}/api/documents/{document_id}/messages"
            for attempt in range(5):
                async with http.post(url, data=message.encode()) as response:
                    if response.status == 202:
                        published += 1
                        break
                    text = (await response.text())[:200]
                    if response.status != 503:  # refused for good: say why, go on
                        log.error(
                            "the server refused a stored message (%d): %s", response.status, text
                        )
                        break
                await asyncio.sleep(0.5 * 2**attempt)  # unavailable for a moment: retry
    log.info("re-published %d message(s) to %s", published, server)
    return published


@dataclass
class Running:
    url: str  # the event webhook's URL, for --event-webhook
    port: int


@contextlib.asynccontextmanager
async def running(
    store: CommentStore,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    secret: str | None = None,
) -> AsyncIterator[Running]:
    """The receiver, listening (``port`` 0 picks a free one)."""
    runner = web.AppRunner(create_receiver(store, secret), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield Running(f"http://{host}:{bound}/events", bound)
    finally:
        await runner.cleanup()


async def main_async(args: argparse.Namespace) -> None:
    store = CommentStore(args.db)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(store, host=args.host, port=args.port, secret=args.webhook_secret) as app:
        log.info("comment store listening on %s (database %s)", app.url, args.db)
        if args.republish and args.server:
            try:
                await republish(store, args.server.rstrip("/"), args.api_key, wait=args.wait)
            except TimeoutError:
                log.error(
                    "%s was not ready within %gs: nothing re-published", args.server, args.wait
                )
        await stop.wait()


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="comments.db", help="the SQLite file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on; 0: any")
    parser.add_argument("--webhook-secret", help="the server's --webhook-secret")
    parser.add_argument("--server", help="the signaling server's http(s) URL, to re-publish to")
    parser.add_argument("--api-key", help="the server's --api-key")
    parser.add_argument(
        "--republish",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="re-publish the stored messages on start (default: yes)",
    )
    parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the server to be ready"
    )
    args = parser.parse_args(argv)
    if args.republish and args.server and not args.api_key:
        parser.error("--server needs --api-key (the HTTP API is off without one)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout
    )
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
