"""The slice of the slurmrestd API the workload speaks, per API version.

Reading answers back is kept cheap on purpose: the generator must not become
the bottleneck it measures, so a 10 MB ``/jobs`` body is searched for one job
id with a byte regex instead of being parsed, and only small ``/job/{id}``
bodies are decoded.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from cacheproxy.core.request import LEGACY_VERSIONS
from cacheproxy.simulator.releases import VERSIONS

#: Every version the simulator serves (``--style all``, the bench's default).
SUPPORTED_VERSIONS = VERSIONS
TERMINAL_CANCEL_STATES = frozenset({"CANCELLED"})


def slurm(version: str, rest: str) -> str:
    return f"/slurm/{version}/{rest}"


def slurmdb(version: str, rest: str) -> str:
    return f"/slurmdb/{version}/{rest}"


def jobs(version: str) -> str:
    return slurm(version, "jobs")


def job(version: str, job_id: int) -> str:
    return slurm(version, f"job/{job_id}")


def submit(version: str) -> str:
    return slurm(version, "job/submit")


def submit_body(version: str, user: str, n: int) -> bytes:
    """A small batch job for ``user``, in the shape ``version`` expects.

    v0.0.36-38 take ``environment`` as an object and the script beside ``job``;
    v0.0.39+ take a list of ``NAME=value`` strings and the script inside it.
    """
    script = "#!/bin/bash\nsleep 300\n"
    desc: dict[str, Any] = {
        "name": f"bench-{user}-{n}",
        "current_working_directory": "/tmp",
        "time_limit": 10,
    }
    if version in LEGACY_VERSIONS:
        desc["environment"] = {"PATH": "/bin:/usr/bin"}
        return orjson.dumps({"script": script, "job": desc})
    desc["environment"] = ["PATH=/bin:/usr/bin"]
    desc["script"] = script
    desc["time_limit"] = {"set": True, "infinite": False, "number": 10}
    return orjson.dumps({"job": desc})


def submitted_job_id(body: bytes) -> int | None:
    """The ``job_id`` of a submit answer (a plain int in every version)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    return _int(data.get("job_id"))


def _int(value: object) -> int | None:
    """An int, or a v0.0.40+ ``{"set": true, "number": N}`` wrapper."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, dict) and value.get("set", True):
        return _int(value.get("number"))
    return None


def _job_id_pattern(job_id: int) -> re.Pattern[bytes]:
    # `"job_id": 123` (any version) or `"job_id": {"set": true, ..., "number": 123}`;
    # the leading quote keeps array_job_id and het_job_id out.
    return re.compile(rb'"job_id"\s*:\s*(?:\{[^{}]*?"number"\s*:\s*)?%d(?![0-9])' % job_id)


def lists_job(body: bytes, job_id: int) -> bool:
    """Does a ``/jobs`` body list ``job_id``? (no JSON parse)"""
    return _job_id_pattern(job_id).search(body) is not None


def job_ids(body: bytes) -> list[int]:
    """Every job id in a ``/jobs`` body (parsed: used once, at setup)."""
    data = orjson.loads(body)
    out: list[int] = []
    for item in data.get("jobs", []) if isinstance(data, dict) else []:
        jid = _int(item.get("job_id")) if isinstance(item, dict) else None
        if jid is not None:
            out.append(jid)
    return out


def jobs_by_user(body: bytes) -> dict[str, list[int]]:
    """Job ids per owner in a ``/jobs`` body (parsed once, at setup)."""
    data = orjson.loads(body)
    out: dict[str, list[int]] = {}
    for item in data.get("jobs", []) if isinstance(data, dict) else []:
        if not isinstance(item, dict):
            continue
        jid = _int(item.get("job_id"))
        user = item.get("user_name")
        if jid is not None and isinstance(user, str):
            out.setdefault(user, []).append(jid)
    return out


def job_states(body: bytes) -> list[str] | None:
    """The state flags of the first job in a ``/job/{id}`` body, or None.

    v0.0.38 has ``"job_state": "CANCELLED"``; v0.0.40+ a list of flags.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    items = data.get("jobs")
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        return None
    state = items[0].get("job_state")
    if isinstance(state, str):
        return [state.upper()]
    if isinstance(state, list):
        return [str(s).upper() for s in state]
    return None


def shows_cancelled(states: list[str]) -> bool:
    return any(s in TERMINAL_CANCEL_STATES for s in states)
