"""Fixtures for the store tests: one Redis for the session (every test gets
its own prefix, so tests never see each other's keys), fresh ones for tests
that restart or break the server, and an injectable clock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clock import Clock
from tests.store import servers

FakeClock = Clock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def mono() -> FakeClock:
    """A monotonic clock for circuits (starts anywhere, moves on demand)."""
    return FakeClock(1000.0)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = servers.RedisServer(tmp_path_factory.mktemp("redis-session")).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[Any]:
    """A Redis of the test's own, for tests that stop, pause or reconfigure it."""
    server = servers.RedisServer(tmp_path / "redis").start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.resume()  # harmless when it was not paused
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"cptest:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def faulty_link(redis_server: Any) -> AsyncIterator[Any]:
    link = await servers.FaultyLink(redis_server.port).start()
    yield link
    await link.aclose()
