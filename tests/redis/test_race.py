"""Many clients joining and leaving one document at once, across three instances."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from cpc_signaling.client import Client
from cpc_signaling.protocol import JoinDocument, LeaveDocument, Message

from ..helpers import ServerProcess, new_id, receive_until
from .cluster import instances
from .server import RedisServer


async def test_concurrent_joins_and_leaves_are_seen_exactly_once(redis: RedisServer) -> None:
    doc = new_id()
    rng = random.Random(7)
    # Not a crash test: timings a loaded CI machine cannot mistake for a dead instance.
    async with instances(
        redis, 3, "--heartbeat-interval", "1", "--instance-timeout", "6"
    ) as servers:
        urls = [s.url for s in servers]
        first = [Client(urls[n % 3], new_id()) for n in range(18)]
        # One user with a tab on two instances; one tab leaves, the user stays.
        multi = new_id()
        tabs = [Client(urls[0], multi), Client(urls[1], multi)]
        late = [Client(urls[n % 3], new_id()) for n in range(9)]
        everyone = [*first, *tabs, *late]
        await asyncio.gather(*(c.connect() for c in everyone))
        seen: dict[Client, list[Message]] = {}

        async def join(client: Client) -> None:
            seen[client] = list(await client.join(doc))

        try:
            await asyncio.gather(*(join(c) for c in [*first, *tabs]))
            leavers = rng.sample(first, 9)
            closers = leavers[:4]  # the others send LeaveDocument

            async def depart(client: Client) -> None:
                await asyncio.sleep(rng.random() * 0.05)
                if client in closers:
                    await client.close()
                else:
                    await client.leave(doc)

            await asyncio.gather(
                *(depart(c) for c in leavers),
                tabs[1].leave(doc),
                *(join(c) for c in late),
            )
            remaining = [c for c in [*first, *late] if c not in leavers] + [tabs[0]]
            present = {c.user_id for c in remaining}
            gone = {c.user_id for c in leavers}

            # A closed socket is not yet a sequenced leave: its instance must notice the
            # close first. Wait for a witness (present since the start) to see each
            # closer's leave, so the marker below is sequenced after all of them.
            witness = tabs[0]
            pending = {c.user_id for c in closers} - {
                m.user_id for m in seen[witness] if type(m) is LeaveDocument
            }

            def last_closer_left(message: Message) -> bool:
                if type(message) is LeaveDocument:
                    pending.discard(message.user_id)
                return not pending

            if pending:
                seen[witness] += await receive_until(witness, last_closer_left)

            # A barrier: a document's events are in one order, so once a client has
            # the marker's join it has everything sequenced before it.
            async with Client(urls[2], new_id()) as marker:
                snapshot = await marker.join(doc)
                joined = [m.user_id for m in snapshot if type(m) is JoinDocument]
                assert sorted(joined[:-1]) == sorted(present)  # the snapshot is who is there
                # ... and so is the shared state a new instance would load.
                prefix = _prefix(servers[0])
                shared = redis.strings("ZRANGE", f"{prefix}:doc:{doc}:users", "0", "-1")
                assert sorted(shared) == sorted(present | {marker.user_id})

                async def until_marker(client: Client) -> None:
                    seen[client] += await receive_until(
                        client,
                        lambda m: type(m) is JoinDocument and m.user_id == marker.user_id,
                    )

                await asyncio.gather(*(until_marker(c) for c in remaining))

            for client in remaining:
                messages = seen[client]
                joins = Counter(m.user_id for m in messages if type(m) is JoinDocument)
                leaves = Counter(m.user_id for m in messages if type(m) is LeaveDocument)
                joins[client.user_id] -= 1  # its own acknowledgement
                for user in present - {client.user_id}:
                    assert (joins[user], leaves[user]) == (1, 0), (client.user_id, user)
                for user in gone:
                    # Either it left before this client's snapshot (seen neither way),
                    # or its join and its leave were each seen once, in that order.
                    assert (joins[user], leaves[user]) in ((0, 0), (1, 1)), (client.user_id, user)
                    if joins[user]:
                        kinds = [
                            type(m)
                            for m in messages
                            if isinstance(m, JoinDocument | LeaveDocument) and m.user_id == user
                        ]
                        assert kinds == [JoinDocument, LeaveDocument]
                assert joins[client.user_id] == 0 and leaves[client.user_id] == 0
        finally:
            await asyncio.gather(*(c.close() for c in everyone), return_exceptions=True)


def _prefix(server: ServerProcess) -> str:
    args = list(server.proc.args)  # type: ignore[arg-type]
    return str(args[args.index("--redis-prefix") + 1])
