"""Fixtures for the hardening tests.

Every test here runs with all loggers captured at DEBUG; afterwards no log
line may contain any secret a test registered with :func:`secret` (tokens,
cookies, Authorization values).  Figures (faults injected, inputs tried) are
counted in :data:`FIGURES` and printed at the end of the run for
docs/hardening.md.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from cacheproxy.settings import Settings
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.hardening.faultproxy import FaultProxy
from tests.hardening.servers import Proxy, hardened_proxy, serve

FIGURES: Counter[str] = Counter()
"""name -> count, summed over the run (printed in the terminal summary)."""

SECRETS: set[str] = {"tok-root", "tok-alice", "tok-bob"}
"""Strings that must never appear in a log line."""

V = "/slurm/v0.0.43"
JOBS = f"{V}/jobs"


def secret(value: str) -> str:
    """Register ``value`` as something no log line may contain; return it."""
    SECRETS.add(value)
    return value


def auth(user: str, token: str | None = None) -> dict[str, str]:
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token or f"tok-{user}"}


class Clock:
    """The proxy's wall clock, movable: TTL expiry without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


_CLIENT_SIDE = frozenset({"httpx", "httpcore", "urllib3", "requests", "schemathesis", "hypothesis"})


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".", 1)[0] in _CLIENT_SIDE:
            return  # the tests' own HTTP clients log their URLs: not the proxy
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a record that cannot be formatted is a finding too
            self.lines.append(f"UNFORMATTABLE {record.name}: {exc!r}")


@pytest.fixture(autouse=True)
def logs() -> Iterator[_Capture]:
    """All log output of the test, at DEBUG; checked for secrets afterwards."""
    root = logging.getLogger()
    handler = _Capture()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    access = logging.getLogger("cacheproxy.access")
    old_propagate, old_disabled = access.propagate, access.disabled
    access.propagate, access.disabled = True, False
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        access.propagate, access.disabled = old_propagate, old_disabled
    FIGURES["log lines checked for secrets"] += len(handler.lines)
    leaked = [line for line in handler.lines for s in SECRETS if s in line]
    assert not leaked, f"secrets in the log: {leaked[:5]}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("hardening figures")
        for name, n in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {n}")


# -- a stack: fake slurmrestd <- fault proxy <- hardened cacheproxy ----------
@dataclass
class Stack:
    fake: FakeSlurmrestd
    faults: FaultProxy
    proxy: Proxy
    clock: Clock
    upstream_url: str

    @property
    def url(self) -> str:
        return self.proxy.url


def stack_settings(upstream: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "upstream": upstream,
        "connect_timeout": 0.5,
        "read_timeout": 1.0,
        "breaker_failures": 3,
        "breaker_cooldown": 0.3,
        "upstream_queue_timeout": 2.0,
        "access_log": True,
        "log_level": "debug",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def fake_upstream() -> AsyncIterator[tuple[FakeSlurmrestd, int]]:
    fake = FakeSlurmrestd()
    async with serve(fake, lifespan="off") as port:
        yield fake, port


@pytest.fixture
async def stack(fake_upstream: tuple[FakeSlurmrestd, int]) -> AsyncIterator[Stack]:
    fake, port = fake_upstream
    faults = FaultProxy("127.0.0.1", port)
    await faults.start()
    try:
        async with hardened_proxy(stack_settings(faults.url)) as proxy:
            clock = Clock()
            assert proxy.app.proxy is not None
            proxy.app.proxy.clock = clock
            yield Stack(fake, faults, proxy, clock, f"http://127.0.0.1:{port}")
    finally:
        await faults.aclose()


def ours(status: int, headers: Any, body: bytes) -> bool:
    """Is this a 500 the proxy made itself (which it must never send)?

    A relayed upstream answer carries ``Cache-Status: cacheproxy; fwd=...``;
    the proxy's own errors say ``source: cacheproxy``; uvicorn's fallback 500
    (an exception that escaped every layer) carries no Cache-Status at all.
    """
    if status != 500:
        return False
    cache_status = headers.get("cache-status", "") or ""
    if isinstance(cache_status, list):  # schemathesis: every header is a list
        cache_status = ", ".join(cache_status)
    if "fwd=" not in cache_status:
        return True
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    errs = doc.get("errors", []) if isinstance(doc, dict) else []
    return any(isinstance(e, dict) and e.get("source") == "cacheproxy" for e in errs)


def check(r: httpx.Response) -> httpx.Response:
    """Count a response and fail on a 500 of the proxy's own."""
    FIGURES["responses checked"] += 1
    assert not ours(r.status_code, r.headers, r.content), (r.status_code, r.headers, r.text[:300])
    return r
