"""Fixtures: a simulator on a free loopback port, served by uvicorn in a thread."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cacheproxy.simulator import SimConfig, Simulator, running_app

ROOT = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": "sim-token-root"}


def auth(user: str) -> dict[str, str]:
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": f"sim-token-{user}"}


@dataclass
class Running:
    app: Simulator
    url: str

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


@contextmanager
def started(**config: Any) -> Iterator[Running]:
    """A simulator with small functional-test defaults (no cost model, frozen jobs)."""
    defaults: dict[str, Any] = {"cost_model": "none", "jobs": 120, "nodes": 40, "job_speed": 0}
    defaults.update(config)
    app = Simulator(SimConfig(**defaults))
    with running_app(app) as url:
        yield Running(app, url)


@pytest.fixture
def sim() -> Iterator[Running]:
    with started() as running:
        yield running


@pytest.fixture
def private_sim() -> Iterator[Running]:
    with started(private_data=True) as running:
        yield running


@pytest.fixture
def client(sim: Running) -> Iterator[httpx.Client]:
    with sim.client() as c:
        yield c
