from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from cacheproxy.store.memory import MemoryStore
from tests.clock import Clock
from tests.core.asgi_transport import ASGITransport
from tests.core.fake_slurmrestd import FakeSlurmrestd


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def upstream() -> FakeSlurmrestd:
    return FakeSlurmrestd()


@pytest.fixture
def transport(upstream: FakeSlurmrestd) -> ASGITransport:
    return ASGITransport(upstream)


@pytest.fixture
async def app(transport: ASGITransport, clock: Clock) -> AsyncIterator[CacheProxyApp]:
    store = MemoryStore(clock=clock)
    application = CacheProxyApp(
        Settings(upstream="http://upstream.test:6820"), transport=transport, store=store
    )
    await application.startup()
    assert application.proxy is not None
    application.proxy.clock = clock
    yield application
    await application.shutdown()


@pytest.fixture
async def client(app: CacheProxyApp) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
    ) as c:
        yield c


def auth(user: str, token: str | None = None) -> dict[str, str]:
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token or f"tok-{user}"}
