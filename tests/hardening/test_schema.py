"""schemathesis against the proxy, from slurmrestd's v0.0.43 OpenAPI spec.

Valid and invalid requests for every operation go through the real hardened
proxy (uvicorn, real transport) to the fake slurmrestd.  The fake answers
404 or 500 to much of it, which the proxy relays: fine.  What must never
appear is a 500 of the proxy's own (``errors[].source == "cacheproxy"``, or
no Cache-Status of a relayed answer)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cacheproxy.http.app import CacheProxyApp
from tests.core.fake_slurmrestd import FakeSlurmrestd, Job
from tests.hardening.conftest import FIGURES, ours, stack_settings
from tests.hardening.servers import hardened_proxy, serve

# shared/ lies beside the repository (as in CI and the developers' machines)
SPEC = Path(__file__).resolve().parents[3] / "shared/slurm-openapi/openapi-v0.0.43.json"
EXAMPLES = 150


class Background:
    """The servers on an event loop in a thread: schemathesis calls are sync."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ready: asyncio.Future[tuple[str, CacheProxyApp]] | None = None
        self.stop = asyncio.Event()
        self.task: Any = None

    def start(self) -> tuple[str, CacheProxyApp]:
        started: Any = asyncio.run_coroutine_threadsafe(self._started(), self.loop)
        return started.result(30)  # type: ignore[no-any-return]

    async def _started(self) -> tuple[str, CacheProxyApp]:
        self.ready = asyncio.get_running_loop().create_future()
        self.stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())
        return await self.ready

    async def _run(self) -> None:
        fake = FakeSlurmrestd()
        fake.jobs = {1: Job(1, "alice"), 2: Job(2, "bob")}
        async with serve(fake, lifespan="off") as up:
            settings_ = stack_settings(f"http://127.0.0.1:{up}", auth_fail_limit=0)
            async with self._proxy(settings_) as (url, app):
                assert self.ready is not None
                self.ready.set_result((url, app))
                await self.stop.wait()

    @contextlib.asynccontextmanager
    async def _proxy(self, s: Any) -> AsyncIterator[tuple[str, CacheProxyApp]]:
        async with hardened_proxy(s) as p:
            yield p.url, p.app

    def close(self) -> None:
        async def finish() -> None:
            self.stop.set()
            await self.task

        asyncio.run_coroutine_threadsafe(finish(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def proxy() -> Iterator[tuple[str, CacheProxyApp]]:
    bg = Background()
    try:
        yield bg.start()
    finally:
        bg.close()


def test_schemathesis_finds_no_500_of_ours(proxy: tuple[str, CacheProxyApp]) -> None:
    url, app = proxy
    schema = schemathesis.openapi.from_path(str(SPEC))
    cases = st.one_of(
        schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
        schema.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )
    session = requests.Session()
    operations: set[str] = set()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=cases, user=st.sampled_from(["alice", "bob", "root"]))
    def run(case: Any, user: str) -> None:
        auth = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": f"tok-{user}"}
        response = case.call(base_url=url, session=session, headers=auth, timeout=10)
        operations.add(f"{case.method} {case.path}")
        assert not ours(response.status_code, response.headers, response.content), (
            case.method,
            case.formatted_path,
            response.status_code,
            response.text[:300],
        )
        FIGURES["schemathesis requests (v0.0.43 spec)"] += 1

    run()
    session.close()
    FIGURES["schemathesis operations covered"] += len(operations)
    assert app.stats.internal_errors == 0
