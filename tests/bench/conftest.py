"""Fixtures of the bench tests: a stub slurmrestd and caching forwarders.

The stubs run in the test's own event loop; the generator talks to them over
real loopback sockets, as it talks to the simulator and the proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.bench.stubs import Forwarder, StubSlurm


@pytest.fixture
async def stub_slurm() -> AsyncIterator[StubSlurm]:
    server = StubSlurm()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def stale_cache(stub_slurm: StubSlurm) -> AsyncIterator[Forwarder]:
    """A caching forwarder that never invalidates: read-your-writes must fail."""
    fwd = Forwarder(stub_slurm.url, cache_forever=True)
    await fwd.start()
    try:
        yield fwd
    finally:
        await fwd.stop()


@pytest.fixture
async def passthrough(stub_slurm: StubSlurm) -> AsyncIterator[Forwarder]:
    fwd = Forwarder(stub_slurm.url, cache_forever=False)
    await fwd.start()
    try:
        yield fwd
    finally:
        await fwd.stop()
