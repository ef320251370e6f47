"""Every transport against a real slurmrestd (22.05 from Debian).

The fake servers in test_transport.py imitate slurmrestd's quirks; this
checks the imitation: ``Connection: Close`` and a closed socket after every
error answer, a bare ``304 NOT MODIFIED`` (no headers at all) for
``?update_time=`` and keep-alive otherwise, all on one pool without a single
failed request.  Needs root and Debian's slurm packages (installed on first
use, like tests/realslurm); ``CACHEPROXY_SKIP_REALSLURM=1`` skips instead.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest

from cacheproxy.upstream.base import Transport, UpstreamRequest
from tests.realslurm.cluster import API, ClusterUnavailable, RealSlurmCluster
from tests.upstream.conftest import MakeTransport

pytestmark = pytest.mark.realslurm


@pytest.fixture(scope="module")
def cluster() -> Iterator[RealSlurmCluster]:
    c = RealSlurmCluster()
    try:
        c.start()
    except ClusterUnavailable as exc:
        if os.environ.get("CACHEPROXY_SKIP_REALSLURM") == "1":
            pytest.skip(f"no real Slurm cluster here: {exc}")
        raise
    try:
        yield c
    finally:
        c.stop()


async def call(
    transport: Transport, cluster: RealSlurmCluster, method: str, path: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(b"host", b"slurm")] + [
        (k.lower().encode(), v.encode()) for k, v in cluster.headers("root").items()
    ]
    resp = await transport.send(UpstreamRequest(method, path, headers, b"", method == "GET"))
    try:
        body = b"".join([c async for c in resp.aiter_body()])
    finally:
        await resp.aclose()
    return resp.status, resp.headers, body


async def test_quirks_of_the_real_slurmrestd(
    cluster: RealSlurmCluster, make_transport: MakeTransport
) -> None:
    transport = make_transport(cluster.url)
    ping = f"/slurm/{API}/ping"
    future = int(time.time()) + 3600
    for _ in range(3):
        status, headers, body = await call(transport, cluster, "GET", ping)
        assert status == 200
        assert b'"pings"' in body
        # An error answer: Connection: Close, then slurmrestd closes.
        status, headers, body = await call(transport, cluster, "GET", f"/slurm/{API}/job/999999")
        assert status >= 400
        assert (b"connection", b"Close") in headers
        status, headers, body = await call(transport, cluster, "GET", f"/slurm/{API}/nope")
        assert status == 404
        # The bare 304.
        status, headers, body = await call(
            transport, cluster, "GET", f"/slurm/{API}/jobs?update_time={future}"
        )
        assert (status, headers, body) == (304, [], b"")
        # A write that fails upstream is answered, not retried or lost.
        status, headers, body = await call(transport, cluster, "DELETE", f"/slurm/{API}/job/999999")
        assert status >= 400


async def test_concurrent_mix_on_one_pool(
    cluster: RealSlurmCluster, make_transport: MakeTransport
) -> None:
    transport = make_transport(cluster.url, max_connections=8)
    paths = [f"/slurm/{API}/ping", f"/slurm/{API}/job/999999", f"/slurm/{API}/jobs"] * 20
    results = await asyncio.gather(*(call(transport, cluster, "GET", p) for p in paths))
    statuses = [r[0] for r in results]
    assert statuses[0::3] == [200] * 20
    assert all(s >= 400 for s in statuses[1::3])
    assert statuses[2::3] == [200] * 20
