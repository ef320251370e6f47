"""Serialisation matches 22.05 byte for byte; the controller lock keeps its rules."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from cacheproxy.simulator import jsonfmt
from cacheproxy.simulator.cost import ControllerLock

EXAMPLES = Path(__file__).resolve().parents[3] / "shared/slurm-openapi/examples/22.05.8-v0.0.38"


def test_jsonc_style_small_cases() -> None:
    body = {"meta": {"plugin": {"type": "openapi/v0.0.38"}}, "errors": [], "jobs": [{"a": {}}]}
    assert jsonfmt.dumps(body, legacy=True) == (
        b'{\n  "meta": {\n    "plugin": {\n      "type": "openapi\\/v0.0.38"\n    }\n  },\n'
        b'  "errors": [\n  ],\n  "jobs": [\n    {\n      "a": {\n      }\n    }\n  ]\n}'
    )
    assert jsonfmt.dumps({"errors": [], "s": "x[]"}, legacy=False) == (
        b'{\n  "errors": [],\n  "s": "x[]"\n}'
    )


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="shared examples not present")
def test_reproduces_real_2205_bodies_byte_for_byte() -> None:
    files = [p for p in sorted(EXAMPLES.glob("*.json")) if p.name != "index.json"]
    assert files
    for path in files:
        raw = path.read_bytes()
        assert jsonfmt.dumps(json.loads(raw), legacy=True) == raw, path.name


async def test_lock_bounds_readers_and_isolates_writers() -> None:
    lock = ControllerLock(read_parallelism=2, rng=random.Random(1))
    active = {"r": 0, "w": 0}
    peaks = {"r": 0, "overlap": 0}

    async def user(exclusive: bool) -> None:
        start = await lock.acquire(exclusive)
        kind = "w" if exclusive else "r"
        active[kind] += 1
        peaks["r"] = max(peaks["r"], active["r"])
        if active["w"] and (active["r"] or active["w"] > 1):
            peaks["overlap"] += 1
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        active[kind] -= 1
        lock.release(exclusive, start)

    await asyncio.gather(*(user(i % 5 == 0) for i in range(60)))
    assert peaks["r"] == 2
    assert peaks["overlap"] == 0
    assert lock.readers == 0
    assert not lock.writer
    assert not lock.waiting
