from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import HealthCheck, settings

from .helpers import SERVER_KINDS, RunningServer

# Property tests check what happens, not how fast: no per-example deadline and no
# "too slow" health check, which a loaded machine (or two test workers sharing two
# cores) trips on the deep-nesting examples. Speed is the benchmark's business.
settings.register_profile("cpc", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cpc")

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
