from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .helpers import RunningServer, running_server


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    """A real in-process server on a free loopback port, default configuration."""
    async with running_server() as running:
        yield running
