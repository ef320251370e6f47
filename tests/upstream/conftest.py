"""Fixtures: a scriptable raw server and a transport of every kind under test.

Every behavioural test runs against every transport ``create_transport`` can
build, so a leaner transport cannot quietly differ from the reference one.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cacheproxy.upstream import create_transport
from cacheproxy.upstream.base import Transport
from tests.upstream.rawserver import RawServer

KINDS = ["h1", "aiohttp"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every test on both loops: the proxy runs on uvloop, whose transports
    differ from asyncio's in details a client depends on (EOF, pausing,
    closing)."""
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    srv = RawServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # A short path: AF_UNIX paths are limited to ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="cpx-") as d:
        yield Path(d)


MakeTransport = Callable[..., Transport]


@pytest.fixture
async def make_transport(kind: str) -> AsyncIterator[MakeTransport]:
    made: list[Transport] = []

    def make(url: str, **kwargs: Any) -> Transport:
        t = create_transport(url, kind=kind, **kwargs)
        made.append(t)
        return t

    yield make
    for t in made:
        await t.aclose()


@pytest.fixture
async def transport(server: RawServer, make_transport: MakeTransport) -> Transport:
    return make_transport(server.url)
