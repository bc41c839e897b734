"""Presence belongs to the connection that set it: a closed tab's cursor goes with it."""

from __future__ import annotations

from cpc_signaling.protocol import CursorUpdate, JoinDocument, PresenceStatus, PresenceUpdate

from ..helpers import TIMEOUT, RunningServer, new_id, receive_until


async def test_a_closed_tabs_cursor_leaves_with_it(server: RunningServer) -> None:
    doc, alice = new_id(), new_id()
    async with server.client(alice) as tab1, server.client() as bob:
        await tab1.join(doc)
        await bob.join(doc)
        await receive_until(tab1, lambda m: isinstance(m, JoinDocument))
        await tab1.cursor(doc, 1, 1)
        await receive_until(bob, lambda m: isinstance(m, CursorUpdate))
        async with server.client(alice) as tab2:
            await tab2.join(doc)
            await tab2.cursor(doc, 2, 2)  # the tab that moved last ...
            got = await receive_until(bob, lambda m: isinstance(m, CursorUpdate))
            assert isinstance(got[-1], CursorUpdate) and got[-1].position.line == 2
            await receive_until(tab1, lambda m: isinstance(m, CursorUpdate))
        # ... closes. Bob is told the presence now in force: tab 1's cursor.
        got = await receive_until(bob, lambda m: isinstance(m, CursorUpdate))
        assert got == [got[-1]] and isinstance(got[-1], CursorUpdate)
        assert (got[-1].user_id, got[-1].position.line) == (alice, 1)
        # A late joiner sees the remaining tab's cursor, never the closed one's.
        async with server.client() as carol:
            snapshot = await carol.join(doc)
        cursors = [m for m in snapshot if isinstance(m, CursorUpdate)]
        assert [(m.user_id, m.position.line) for m in cursors] == [(alice, 1)]
        # Alice's remaining tab is not sent her own presence back: its next frame is Bob's.
        await bob.cursor(doc, 7, 0)
        nxt = await receive_until(tab1, lambda m: isinstance(m, CursorUpdate))
        assert [(m.user_id, m.position.line) for m in nxt if isinstance(m, CursorUpdate)] == [
            (bob.user_id, 7)
        ]


async def test_a_presence_update_in_force_again_is_sent_again(server: RunningServer) -> None:
    doc, alice = new_id(), new_id()
    async with server.client(alice) as tab1, server.client(alice) as tab2, server.client() as bob:
        for client in (tab1, tab2, bob):
            await client.join(doc)
        await tab1.presence(doc, cursor=(5, 0), selection=((5, 0), (5, 3)), is_typing=False)
        await tab1.status(doc, "busy")
        await receive_until(bob, lambda m: isinstance(m, PresenceStatus))
        await tab2.cursor(doc, 9, 9)
        await receive_until(bob, lambda m: isinstance(m, CursorUpdate))
        await tab2.close()
        # Tab 1's PresenceUpdate was still in force (its selection), but its cursor was
        # overridden by the closed tab: Bob gets it again, and nothing else.
        got = await bob.receive(TIMEOUT)
        assert isinstance(got, PresenceUpdate) and got.cursor.line == 5
        async with server.client() as carol:
            snapshot = await carol.join(doc)
        assert [type(m).__name__ for m in snapshot] == [
            "JoinDocument",  # alice, with tab 1's presence
            "PresenceUpdate",
            "PresenceStatus",
            "JoinDocument",  # bob
            "JoinDocument",  # carol's acknowledgement
        ]
