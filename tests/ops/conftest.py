"""Fixtures for the operations tests: the proxy in-process in front of the core
tests' fake slurmrestd, with an admin token, an injected wall clock and an
injected monotonic clock for readiness caching."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cacheproxy.http.app import CacheProxyApp
from cacheproxy.ops.readiness import Readiness
from cacheproxy.settings import Settings
from cacheproxy.store.memory import MemoryStore
from tests.clock import Clock
from tests.core.asgi_transport import ASGITransport
from tests.core.fake_slurmrestd import FakeSlurmrestd

ADMIN_TOKEN = "admin-s3cret-token"
JOBS = "/slurm/v0.0.43/jobs"
PARTITIONS = "/slurm/v0.0.43/partitions"


def auth(user: str, token: str | None = None) -> dict[str, str]:
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token or f"tok-{user}"}


def admin(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mono() -> Clock:
    """The monotonic clock readiness caches its verdict by."""
    return Clock(1000.0)


@pytest.fixture
def upstream() -> FakeSlurmrestd:
    return FakeSlurmrestd()


@pytest.fixture
def transport(upstream: FakeSlurmrestd) -> ASGITransport:
    return ASGITransport(upstream)


@pytest.fixture
def settings() -> Settings:
    return Settings(upstream="http://upstream.test:6820", admin_token=ADMIN_TOKEN)


AppFactory = Callable[..., Any]


@pytest.fixture
async def make_app(
    transport: ASGITransport, clock: Clock, mono: Clock
) -> AsyncIterator[AppFactory]:
    """Build (and afterwards shut down) apps: ``await make_app(settings, store=...)``."""
    made: list[CacheProxyApp] = []

    async def factory(settings: Settings, **kw: Any) -> CacheProxyApp:
        kw.setdefault("store", MemoryStore(clock=clock))
        kw.setdefault("transport", transport)
        application = CacheProxyApp(settings, **kw)
        await application.startup()
        assert application.proxy is not None
        application.proxy.clock = clock
        readiness: Readiness = application.own.state.readiness
        readiness.monotonic = mono
        made.append(application)
        return application

    yield factory
    for application in made:
        await application.shutdown()


@pytest.fixture
async def app(make_app: AppFactory, settings: Settings) -> CacheProxyApp:
    application: CacheProxyApp = await make_app(settings)
    return application


@pytest.fixture
async def client(app: CacheProxyApp) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
    ) as c:
        yield c


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse an exposition into ``{(sample name, sorted labels): value}``."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)
