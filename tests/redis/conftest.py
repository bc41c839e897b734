from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import RedisServer, redis_server


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A private redis-server on a free port, shared by a test module."""
    with redis_server() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server for one test (which may stop and restart it)."""
    with redis_server() as server:
        yield server
