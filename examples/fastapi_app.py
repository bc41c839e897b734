"""cpc-signaling inside a FastAPI application: presence next to your own routes.

Run it (from the repository root, with the ``asgi`` extra and FastAPI installed)::

    CPC_API_KEY=... uvicorn examples.fastapi_app:app --ws websockets-sansio --ws-max-size 262144

Browsers connect to ``ws://HOST:8000/signaling/ws``; ``/signaling/healthz``,
``/signaling/readyz`` and ``/signaling/metrics`` are there too. The routes below
use the server-side Python API (``publish``, ``presence``, ``disconnect``)
directly: no HTTP round trip, no API key needed inside the process. Any ``CPC_*``
environment variable configures the signaling side (``CPC_REDIS_URL``,
``CPC_JWT_SECRET``...), exactly as for ``cpc-signaling serve``.

Tested by tests/asgi/test_fastapi_example.py.
"""

from __future__ import annotations

import datetime
import os

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from cpc_signaling.asgi import SignalingApp, create_app
from cpc_signaling.protocol import Comment, Position, ProtocolError
from cpc_signaling.server import Config
from cpc_signaling.server.service import Unavailable

# A fixed id for messages the application itself posts (a "system" user).
SYSTEM_USER = "00000000-0000-4000-8000-000000000001"


class Note(BaseModel):
    text: str
    line: int = 0
    column: int = 0


def create_example_app(config: Config | None = None) -> tuple[FastAPI, SignalingApp]:
    signaling = create_app(config or Config.from_args([], env=os.environ))
    # The lifespan starts the service (backend, Redis) and, on shutdown, drains it:
    # every connection leaves its documents and is closed with 1001.
    app = FastAPI(lifespan=signaling.lifespan)
    app.mount("/signaling", signaling)

    @app.post("/documents/{document_id}/notes", status_code=202)
    async def post_note(document_id: str, note: Note) -> dict[str, str]:
        """Post a Comment as the system user: live members get it, later joiners too."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            signaling.service.publish(
                Comment(
                    document_id=document_id,
                    user_id=SYSTEM_USER,
                    position=Position(line=note.line, column=note.column),
                    content=note.text,
                    timestamp=now,
                )
            )
        except ProtocolError as exc:
            raise HTTPException(400, exc.message) from None
        except Unavailable as exc:
            raise HTTPException(503, str(exc)) from None
        return {"document_id": document_id.lower()}

    @app.get("/documents/{document_id}/who")
    async def who(document_id: str) -> list[str]:
        """Who is in the document now (all instances, with Redis)."""
        try:
            return [user.user_id for user in await signaling.service.presence(document_id)]
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.post("/users/{user_id}/kick")
    async def kick(user_id: str) -> dict[str, int]:
        """Close the user's connections everywhere (they leave their documents at once)."""
        try:
            return {"closed_here": await signaling.service.disconnect(user_id)}
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    return app, signaling


app, signaling = create_example_app()
