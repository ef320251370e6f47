"""A request the transport refuses to send is the client's doing: it must
not count against slurmrestd's health (else bad bytes from one client would
open the circuit and fail everyone's misses)."""

from __future__ import annotations

import pytest

from cacheproxy.upstream.base import (
    BufferedResponse,
    UpstreamRefused,
    UpstreamRequest,
    UpstreamResponse,
)
from cacheproxy.upstream.protect import ProtectedTransport

REQ = UpstreamRequest(method="GET", target="/slurm/v0.0.43/ping", headers=[])


class Refusing:
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if request.target.endswith("bad"):
            raise UpstreamRefused("not valid UTF-8")
        return BufferedResponse(status=200, headers=[], body=b"ok")

    async def aclose(self) -> None:
        return None


async def test_refusals_never_open_the_circuit_nor_hold_a_slot() -> None:
    t = ProtectedTransport(Refusing(), breaker_failures=2, max_concurrent=1, max_queue=0)
    bad = UpstreamRequest(method="GET", target="/x/bad", headers=[])
    for _ in range(10):
        with pytest.raises(UpstreamRefused):
            await t.send(bad)
    assert not t.breaker.is_open
    assert t.breaker.faults == 0
    resp = await t.send(REQ)  # the only slot was given back every time
    assert resp.status == 200
    await resp.aclose()
