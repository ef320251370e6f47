"""Every request the proxy sends upstream carries whose turn it takes in the
fair queue (the identity's user key, never the token) and its cost class:
a miss's fill, a pass-through GET, a write."""

from __future__ import annotations

import httpx
import pytest

from cacheproxy.core.rules import COST_CLASSES
from cacheproxy.upstream.base import UpstreamRequest, UpstreamResponse
from tests.core.asgi_transport import ASGITransport
from tests.core.conftest import auth


async def test_upstream_requests_carry_user_and_cost(
    client: httpx.AsyncClient, transport: ASGITransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, str, str, int]] = []
    forward = transport.send

    async def record(request: UpstreamRequest) -> UpstreamResponse:
        sent.append((request.method, request.target.split("?")[0], request.user, request.cost))
        return await forward(request)

    monkeypatch.setattr(transport, "send", record)
    await client.get("/slurm/v0.0.43/jobs", headers=auth("alice"))  # a miss: the fill
    await client.get("/slurm/v0.0.43/ping", headers=auth("bob"))  # passed through
    await client.get("/slurmdb/v0.0.43/qos", headers=auth("alice"))
    await client.post("/slurm/v0.0.43/job/submit", headers=auth("carol"), content=b"{}")
    await client.get("/slurm/v0.0.43/ping")  # no credential: the anonymous line
    assert sent == [
        ("GET", "/slurm/v0.0.43/jobs", "name:alice", COST_CLASSES["list"]),
        ("GET", "/slurm/v0.0.43/ping", "name:bob", COST_CLASSES["cheap"]),
        ("GET", "/slurmdb/v0.0.43/qos", "name:alice", COST_CLASSES["slurmdb"]),
        ("POST", "/slurm/v0.0.43/job/submit", "name:carol", COST_CLASSES["list"]),
        ("GET", "/slurm/v0.0.43/ping", "", COST_CLASSES["cheap"]),
    ]
    assert not any("tok-" in user for _, _, user, _ in sent)
