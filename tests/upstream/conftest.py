"""Fixtures: a scriptable raw server and the transport under test.

Every behavioural test runs with slurmrestd on TCP and on a UNIX socket (the
two ways it listens; aiohttp uses a different connector for each), on
asyncio's loop and on uvloop.
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

FAMILIES = ["tcp", "unix"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every test on both loops: the proxy runs on uvloop, whose transports
    differ from asyncio's in details a client depends on (EOF, pausing,
    closing)."""
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # A short path: AF_UNIX paths are limited to ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="cpx-") as d:
        yield Path(d)


@pytest.fixture
async def server(family: str, sock_dir: Path) -> AsyncIterator[RawServer]:
    srv = RawServer()
    await srv.start(uds=str(sock_dir / "slurmrestd.sock") if family == "unix" else None)
    yield srv
    await srv.stop()


MakeTransport = Callable[..., Transport]


@pytest.fixture
async def make_transport() -> AsyncIterator[MakeTransport]:
    made: list[Transport] = []

    def make(url: str, **kwargs: Any) -> Transport:
        t = create_transport(url, **kwargs)
        made.append(t)
        return t

    yield make
    for t in made:
        await t.aclose()


@pytest.fixture
async def transport(server: RawServer, make_transport: MakeTransport) -> Transport:
    return make_transport(server.url)
