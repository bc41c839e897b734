from __future__ import annotations

from cpc_signaling.protocol import CursorUpdate, JoinDocument

from ..helpers import TIMEOUT, RunningServer, new_id


async def test_two_clients_exchange_cursors(server: RunningServer) -> None:
    doc = new_id()
    async with server.client() as a, server.client() as b:
        assert [type(m) for m in await a.join(doc)] == [JoinDocument]
        snapshot = await b.join(doc)
        assert snapshot == [
            JoinDocument(document_id=doc, user_id=a.user_id),
            JoinDocument(document_id=doc, user_id=b.user_id),
        ]
        assert await a.receive(TIMEOUT) == JoinDocument(document_id=doc, user_id=b.user_id)
        await b.cursor(doc, 4, 2)
        got = await a.receive(TIMEOUT)
        assert isinstance(got, CursorUpdate)
        assert (got.user_id, got.position.line, got.position.column) == (b.user_id, 4, 2)
