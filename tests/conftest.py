from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from .helpers import SERVER_KINDS, RunningServer

ServerFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningServer]]


@pytest.fixture(params=sorted(SERVER_KINDS))
def server_factory(request: pytest.FixtureRequest) -> ServerFactory:
    """``running_server`` or ``running_asgi_server``: every test that takes it runs twice,
    against the standalone aiohttp server and against the ASGI app under uvicorn."""
    factory: ServerFactory = SERVER_KINDS[request.param]
    return factory


@pytest.fixture
async def server(server_factory: ServerFactory) -> AsyncIterator[RunningServer]:
    """A real in-process server on a free loopback port, default configuration
    (parametrized: aiohttp, then ASGI under uvicorn)."""
    async with server_factory() as running:
        yield running
