"""Bounded stored history over real sockets: per document by bytes, and fairly per user."""

from __future__ import annotations

from typing import Any

from cpc_signaling.client import Client
from cpc_signaling.protocol import Comment, Error, ErrorCode, JoinDocument, Message

from ..conftest import ServerFactory
from ..helpers import new_id, receive_until

# Flooding is the point here: no per-connection rate may stand in the way.
NO_RATES: dict[str, Any] = {"rate_limit": 0, "stored_rate_limit": 0, "error_limit": 1000}


def comments(messages: list[Message]) -> list[Comment]:
    return [m for m in messages if isinstance(m, Comment)]


async def rejoin(client: Client, doc: str) -> list[Message]:
    """A repeated join: the document's snapshot again, up to the acknowledgement."""
    return await client.join(doc)


async def test_a_document_keeps_the_newest_comments_within_its_byte_budget(
    server_factory: ServerFactory,
) -> None:
    doc = new_id()
    async with (
        server_factory(max_stored_bytes_per_document=10_000, **NO_RATES) as srv,
        srv.client() as alice,
    ):
        await alice.join(doc)
        for n in range(30):
            await alice.comment(doc, n, 0, f"{n:02d} " + "x" * 900)
        # A repeated join on the same connection: handled after every comment.
        snapshot = await rejoin(alice, doc)
        kept = comments(snapshot)
        assert kept, snapshot
        assert [c.content[:2] for c in kept] == [f"{n:02d}" for n in range(30 - len(kept), 30)]
        state = srv.service.hub.documents[doc]
        assert state.stored_bytes == sum(map(len, state.stored)) <= 10_000
        assert len(kept) == len(state.stored) >= 9  # about 1 KB each: 10 fit, never fewer


async def test_the_member_over_its_share_is_refused_and_the_others_still_store(
    server_factory: ServerFactory,
) -> None:
    flood_doc, doc = new_id(), new_id()
    async with (
        server_factory(max_stored_bytes=40_000, **NO_RATES) as srv,
        srv.client() as mallory,
        srv.client() as alice,
        srv.client() as bob,
    ):
        await mallory.join(flood_doc)
        await alice.join(doc)
        await bob.join(doc)
        await receive_until(alice, lambda m: isinstance(m, JoinDocument))
        for n in range(40):  # 48 KB into a 40 KB store
            await mallory.comment(flood_doc, n, 0, f"{n:02d} " + "m" * 1000)
        refused = (await receive_until(mallory, lambda m: isinstance(m, Error)))[-1]
        assert isinstance(refused, Error)
        assert refused.code == ErrorCode.CONNECTION_ERROR
        assert "fair share" in refused.message, refused
        # The store is full, of Mallory's comments. Alice is under her share: she stores.
        await alice.comment(doc, 1, 1, "a" * 1000)
        got = (await receive_until(bob, lambda m: isinstance(m, Comment)))[-1]
        assert isinstance(got, Comment) and got.user_id == alice.user_id
        again = await rejoin(alice, doc)  # no error came first, and the comment is kept
        assert not [m for m in again if isinstance(m, Error)], again
        assert [c.user_id for c in comments(again)] == [alice.user_id]
        # Room for Alice came from Mallory's oldest comments.
        async with srv.client() as late:
            flood = comments(await late.join(flood_doc))
        assert flood and flood[0].content[:2] != "00"
        assert srv.service.hub.stored_bytes <= 40_000
        # Mallory is still over her share (half the store, now that two users hold some).
        await mallory.comment(flood_doc, 99, 0, "m" * 1000)
        refused = (await receive_until(mallory, lambda m: isinstance(m, Error)))[-1]
        assert isinstance(refused, Error) and refused.code == ErrorCode.CONNECTION_ERROR
        assert "fair share" in refused.message
