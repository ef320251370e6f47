"""Who may read a shared entry, and what they get: in process, the proxy in
front of the simulator (slurmrestd's authentication rules, per release).

* only a credential slurmrestd accepted (never past its JWT's ``exp``) or
  that the local JWT check verified; any other request goes upstream as
  that user (and its good answer refreshes the entry);
* ``meta.client.source`` is the requester's own; everything else byte for
  byte; no compressed copy of a shared entry carries another's source.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.simulator import SimConfig, Simulator
from cacheproxy.simulator.config import default_users
from cacheproxy.store.memory import MemoryStore
from tests.clock import Clock
from tests.core.asgi_transport import ASGITransport

NODES = "/slurm/v0.0.43/nodes"
KEY = secrets.token_bytes(32)


def signed(user: str, exp: float, key: bytes = KEY) -> str:
    return jwt.encode({"sun": user, "exp": int(exp), "iat": int(time.time())}, key, "HS256")


def auth(user: str, token: str | None = None) -> dict[str, str]:
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token or f"sim-token-{user}"}


class Env:
    def __init__(self, app: CacheProxyApp, transport: ASGITransport, clock: Clock) -> None:
        self.app, self.transport, self.clock = app, transport, clock

    def client(self, addr: tuple[str, int] = ("192.0.2.1", 40001)) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=addr), base_url="http://proxy.test"
        )

    @property
    def upstream(self) -> int:
        return len(self.transport.sent)


def _users(**extra: str) -> dict[str, str]:
    users = default_users()
    users.update(extra)
    return users


async def _env(tmp_path: Path, users: dict[str, str], **settings: Any) -> AsyncIterator[Env]:
    clock = Clock(time.time())
    sim = Simulator(SimConfig(cost_model="none", jobs=30, nodes=8, job_speed=0, users=users))
    transport = ASGITransport(sim)
    app = CacheProxyApp(
        # (no audit of shared views: these tests count upstream requests;
        # tests/scope/test_audit.py counts the audit's)
        Settings(
            upstream="http://upstream.test:6820",
            private_data="none",
            **{"shared_audit_rate": 0.0, **settings},
        ),
        transport=transport,
        store=MemoryStore(clock=clock),
    )
    await app.startup()
    assert app.proxy is not None
    app.proxy.clock = clock
    yield Env(app, transport, clock)
    await app.shutdown()


CAROL_EXP = int(time.time()) + 60
CAROL_JWT = signed("carol", CAROL_EXP)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _env(tmp_path, _users(carol=CAROL_JWT)):
        yield e


@pytest.fixture
async def jwt_env(tmp_path: Path) -> AsyncIterator[Env]:
    key_file = tmp_path / "jwt_hs256.key"
    key_file.write_bytes(KEY)
    async for e in _env(tmp_path, _users(), jwt_key=str(key_file)):
        yield e


def _hit(r: httpx.Response) -> bool:
    return r.headers.get("cache-status", "").startswith("cacheproxy; hit")


async def test_never_accepted_credential_is_proved_cheaply_then_shares(env: Env) -> None:
    """A fresh shared entry waits: the credential's proof is the cheap
    question (``/jobs`` with an ``update_time`` ahead: slurmctld builds no
    list), not the whole list again; accepted, the request is a shared hit."""
    async with env.client() as c:
        assert (await c.get(NODES, headers=auth("user001"))).status_code == 200
        assert _hit(await c.get(NODES, headers=auth("user001")))
        before = env.upstream
        r = await c.get(NODES, headers=auth("user002"))  # valid, never accepted
        assert r.status_code == 200
        assert _hit(r)
        assert env.upstream == before + 1
        proof = env.transport.sent[-1]
        assert proof.target.startswith("/slurm/v0.0.43/jobs?update_time=")
        assert int(proof.target.rsplit("=", 1)[1]) > env.clock.now
        assert proof.user == "name:user002"
        assert _hit(await c.get(NODES, headers=auth("user002")))
        assert env.upstream == before + 1
        # No fresh entry: the request itself is the proof, as before.
        env.clock.advance(3600)
        r = await c.get(NODES, headers=auth("user003"))
        assert r.status_code == 200
        assert not _hit(r)
        assert env.transport.sent[-1].target == NODES


async def test_refused_credential_never_gets_the_shared_entry(env: Env) -> None:
    async with env.client() as c:
        good = await c.get(NODES, headers=auth("user001"))
        assert good.status_code == 200
        for headers in (
            auth("user002", "sim-token-wrong"),
            auth("user002", "sim-token-user001"),  # another user's token
            {"X-SLURM-USER-TOKEN": "sim-token-wrong"},
        ):
            before = env.upstream
            r = await c.get(NODES, headers=headers)
            assert r.status_code != 200
            assert not _hit(r)
            assert b'"nodes"' not in r.content or orjson.loads(r.content)["nodes"] == []
            # (the proof refused, the request itself goes upstream: slurmrestd's
            # answer to it is the client's)
            assert env.upstream <= before + 2
            assert env.transport.sent[-1].target == NODES
            # and again: a refusal is never remembered as an acceptance
            r = await c.get(NODES, headers=headers)
            assert not _hit(r)
            assert r.status_code != 200


async def test_expired_credential_never_reads_a_shared_hit(env: Env) -> None:
    env.clock.now = CAROL_EXP - 5
    async with env.client() as c:
        assert (await c.get(NODES, headers=auth("user001"))).status_code == 200
        # carol's JWT is accepted while valid ...
        assert (await c.get(NODES, headers=auth("carol", CAROL_JWT))).status_code == 200
        assert _hit(await c.get(NODES, headers=auth("carol", CAROL_JWT)))
        env.clock.advance(6)  # ... and never past its exp
        assert _hit(await c.get(NODES, headers=auth("user001")))  # (still fresh)
        before = env.upstream
        r = await c.get(NODES, headers=auth("carol", CAROL_JWT))
        assert not _hit(r)
        assert env.upstream == before + 1


async def test_local_jwt_check_lets_a_verified_token_read_without_asking(jwt_env: Env) -> None:
    env = jwt_env
    async with env.client() as c:
        assert (await c.get(NODES, headers=auth("user001"))).status_code == 200
        before = env.upstream
        dave = signed("user003", time.time() + 300)
        r = await c.get(NODES, headers=auth("user003", dave))
        assert _hit(r)
        assert env.upstream == before
        # Not vouched for: another key, expired, a name other than the owner's.
        for headers in (
            auth("user004", signed("user004", time.time() + 300, secrets.token_bytes(32))),
            auth("user004", signed("user004", time.time() - 10)),
            auth("user005", signed("user004", time.time() + 300)),
        ):
            r = await c.get(NODES, headers=headers)
            assert not _hit(r), headers
            assert env.transport.sent[-1].target == NODES  # (its own request, after any proof)
        assert env.upstream <= before + 6


async def test_meta_client_source_is_the_requesters_and_the_rest_byte_for_byte(env: Env) -> None:
    async with env.client(("192.0.2.7", 5001)) as alice, env.client(("2001:db8::9", 6002)) as bob:
        await alice.get(NODES, headers=auth("user001"))
        await bob.get(NODES, headers=auth("user002"))  # (accepted now)
        a = await alice.get(NODES, headers=auth("user001"))
        b = await bob.get(NODES, headers={**auth("user002"), "Accept-Encoding": "gzip"})
        assert _hit(a)
        assert _hit(b)
        assert orjson.loads(a.content)["meta"]["client"]["source"] == "192.0.2.7:5001"
        assert orjson.loads(b.content)["meta"]["client"]["source"] == "[2001:db8::9]:6002"
        # gzip: made of parts stored once around the requester's own source
        assert b.headers.get("content-encoding") == "gzip"
        assert int(b.headers["content-length"]) < len(b.content)
        # Everything else is the stored answer, byte for byte.
        tail_a = a.content.replace(b'"192.0.2.7:5001"', b"X")
        tail_b = b.content.replace(b'"[2001:db8::9]:6002"', b"X")
        assert tail_a == tail_b
        assert a.content.count(b"192.0.2.7:5001") == 1
        # user and group are slurmrestd's constants, kept as stored
        client = orjson.loads(a.content)["meta"]["client"]
        assert (client["user"], client["group"]) == ("root", "root")


async def test_sharing_counters_reach_the_metrics(env: Env) -> None:
    """Shared hits, credential proofs and entries withheld from a credential
    not accepted yet: counted by route, exported to Prometheus."""
    stats = env.app.stats
    async with env.client() as c:
        assert not _hit(await c.get(NODES, headers=auth("user001")))  # fill, and proof
        assert _hit(await c.get(NODES, headers=auth("user001")))
        wrong = await c.get(NODES, headers=auth("user002", "sim-token-wrong"))
        assert not _hit(wrong)  # withheld: never accepted (then refused)
        # withheld, proved by the cheap question (prove.py), then a shared hit
        assert _hit(await c.get(NODES, headers=auth("user002")))
        assert _hit(await c.get(NODES, headers=auth("user002")))
        metrics = (await c.get("/_cacheproxy/metrics")).text
    assert stats.shared_hits == {"nodes": 3}
    assert stats.shared_proofs == {"nodes": 3}
    assert stats.shared_withheld == {"nodes": 2}
    assert 'cacheproxy_shared_hits_total{route="nodes"} 3.0' in metrics
    assert 'cacheproxy_shared_proofs_total{route="nodes"} 3.0' in metrics
    assert 'cacheproxy_shared_withheld_total{route="nodes"} 2.0' in metrics


async def test_a_reload_keeps_the_routes_the_audit_demoted(env: Env) -> None:
    """New PrivateData by SIGHUP: the scopes follow it, and a route the audit
    turned per user stays per user (for the process's life)."""
    app, proxy = env.app, env.app.proxy
    assert proxy is not None
    proxy.audit.demote("nodes", "two users got different answers", publish=False)
    apply = hardening.reload_into(hardening.wrap(app), app)
    apply(app.settings.model_copy(update={"private_data": "jobs"}), app.rules)
    async with env.client() as c:
        assert (await c.get(NODES, headers=auth("user001"))).status_code == 200
        parts = "/slurm/v0.0.43/partitions"
        assert (await c.get(parts, headers=auth("user002"))).status_code == 200  # accepted
        assert _hit(await c.get(parts, headers=auth("user001")))  # (partitions: shared)
        before = env.upstream
        assert not _hit(await c.get(NODES, headers=auth("user002")))  # nodes: per user still
        assert env.upstream == before + 1
        scopes = (await c.get("/_cacheproxy/stats")).json()["scopes"]
    why = {d["route"]: (d["scope"], d["why"]) for d in scopes["routes"]}
    assert why["nodes"][0] == "user"
    assert "demoted" in why["nodes"][1]
    assert why["jobs"] == ("user", why["jobs"][1])
    assert "PrivateData=jobs" in why["jobs"][1]
    assert why["partitions"][0] == "shared"
    assert scopes["demoted"] == ["nodes"]
    assert scopes["setting"] == "jobs"


JOBS = "/slurm/v0.0.43/jobs"


async def test_a_refused_credential_never_gets_a_fresh_shared_job_list(env: Env) -> None:
    """/jobs revalidates with ``update_time``: whichever question a refused
    credential's request becomes upstream, it never reads the entry."""
    async with env.client() as c:
        assert (await c.get(JOBS, headers=auth("user001"))).status_code == 200
        for headers in (
            auth("user002", "sim-token-wrong"),
            auth("user002", "sim-token-user001"),
            {"X-SLURM-USER-TOKEN": "sim-token-wrong"},
        ):
            r = await c.get(JOBS, headers=headers)
            assert r.status_code != 200
            assert not _hit(r)
            assert b'"jobs"' not in r.content or orjson.loads(r.content)["jobs"] == []
