"""examples/comment_store.py: the SQLite comment store behind the event webhook."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
import time
from pathlib import Path
from types import ModuleType

import aiohttp

from cpc_signaling.protocol import Annotation, Comment, JoinDocument, Position, encode
from cpc_signaling.server.hooks import sign
from cpc_signaling.server.hooks.events import encode_batch, make_event

from ..helpers import new_id

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "comment_store.py"
SECRET = "example-secret"


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
