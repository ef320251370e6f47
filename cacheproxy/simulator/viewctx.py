"""What every simulated operation shares: the request as it sees it, the
render cache, and the small parsers of ids, times and bodies.

Apart from the operations themselves (``views*.py``) so that the
``/slurm/...`` groups and the ``/slurmdb/...`` operations build on one
base without importing each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from cacheproxy.simulator import jsonfmt, render4x
from cacheproxy.simulator import model as m
from cacheproxy.simulator.entities import Job
from cacheproxy.simulator.envelope import Pre
from cacheproxy.simulator.routes import LEGACY

_JOB_ID = re.compile(r"^(\d+)(?:_(\d+)|\+(\d+))?$")


@dataclass
class Ctx:
    """One request, as the operations see it."""

    version: str  # the version whose templates render this request (releases.base_version)
    family: str
    params: dict[str, str]
    query: dict[str, str]
    body: bytes
    user: str
    viewer: str | None  # None: sees every job
    client_requests: int = 0
    api_version: str = ""  # the version the request named (empty: ``version``)
    #: The daemon's release: slurmrestd, not the plugin, maps errors to statuses.
    daemon: tuple[int, int, int] = (22, 5, 8)

    @property
    def legacy(self) -> bool:
        return self.version == LEGACY

    @property
    def invalid_query_status(self) -> int:
        """ESLURM_REST_INVALID_QUERY: 400 in 22.05's operations.c, 422 from 23.02."""
        return 422 if self.daemon >= (23, 2, 0) else 400

    @property
    def job_not_found_status(self) -> int:
        """ESLURM_INVALID_JOB_ID: 404 from 23.02 (operations.c, then http.c),
        whichever plugin answered; 22.05 maps it to nothing (500)."""
        return 404 if self.daemon >= (23, 2, 0) else 500


class RenderCache:
    """Rendered members keyed by what they depend on, checked by generation."""

    def __init__(self) -> None:
        self._members: dict[tuple[Any, ...], tuple[tuple[int, ...], Pre, int]] = {}
        self._jobs: dict[tuple[int, str, str], tuple[int, bytes]] = {}

    def member(
        self,
        key: tuple[Any, ...],
        gens: tuple[int, ...],
        build: Callable[[], tuple[Pre, int]],
    ) -> tuple[Pre, int]:
        hit = self._members.get(key)
        if hit is not None and hit[0] == gens:
            return hit[1], hit[2]
        pre, n = build()
        self._members[key] = (gens, pre, n)
        return pre, n

    def job_fragment(
        self, job: Job, version: str, kind: str, build: Callable[[Job], dict[str, Any]]
    ) -> bytes:
        """One job, pretty-printed at list depth 2, cached per job version."""
        key = (job.job_id, version, kind)
        hit = self._jobs.get(key)
        if hit is not None and hit[0] == job.version:
            return hit[1]
        pretty = orjson.dumps(build(job), option=orjson.OPT_INDENT_2)
        text = b"    " + pretty.replace(b"\n", b"\n    ")
        if version == LEGACY:
            text = jsonfmt.legacy_quirks(text)
        self._jobs[key] = (job.version, text)
        return text

    @property
    def job_fragments(self) -> int:
        return len(self._jobs)

    def forget_jobs(self, alive: set[int]) -> None:
        for key in [k for k in self._jobs if k[0] not in alive]:
            del self._jobs[key]


class ViewBase:
    """The cluster and render cache every group of operations works on."""

    def __init__(self, cluster: m.Cluster, cache: RenderCache) -> None:
        self.c = cluster
        self.cache = cache

    def _hidden(self, ctx: Ctx, word: str) -> bool:
        """PrivateData=``word`` and the requester is no operator: slurmctld's
        ``validate_operator``, slurmdbd's ``is_user_min_admin_level``."""
        return self.c.config.private(word) and not self.c.privileged(ctx.user)

    def _times(self, ctx: Ctx, collection: str) -> list[tuple[str, Any]]:
        """The ``last_backfill``/``last_update`` members of data_parser releases."""
        if ctx.legacy:
            return []
        out: list[tuple[str, Any]] = []
        if collection == "jobs":
            out.append(("last_backfill", render4x.num(self.c.last_backfill)))
        out.append(("last_update", render4x.num(self.c.now())))
        return out


def list_member(key: str, fragments: list[bytes], legacy: bool) -> Pre:
    """``  "key": [ ... ]`` from pre-rendered depth-2 fragments."""
    if not fragments:
        return Pre(b'  "%s": [\n  ]' % key.encode() if legacy else b'  "%s": []' % key.encode())
    parts = [b'  "%s": [\n' % key.encode()]
    for f in fragments:
        parts.append(f)
        parts.append(b",\n")
    parts[-1] = b"\n  ]"
    return Pre(b"".join(parts))


def parse_job_id(text: str) -> tuple[int, int | None] | None:
    """``123`` -> (123, None); ``123_4`` -> (123, 4); ``123+1`` -> (124, None)."""
    mt = _JOB_ID.match(text)
    if not mt:
        return None
    base = int(mt.group(1))
    if mt.group(3) is not None:
        return base + int(mt.group(3)), None
    return base, int(mt.group(2)) if mt.group(2) is not None else None


def unchanged_since(query: dict[str, str], changed: int) -> bool:
    """slurmctld's test: ``(update_time - 1) >= last change`` means "no change"."""
    raw = query.get("update_time")
    if raw is None:
        return False
    try:
        t = int(raw)
    except ValueError:
        return False
    return t - 1 >= changed


def json_body(ctx: Ctx) -> Any:
    if not ctx.body.strip():
        return None
    return orjson.loads(ctx.body)


def json_body_or_empty(ctx: Ctx) -> Any:
    """The body's JSON, ``{}`` when empty or no JSON: the writes that go on
    with their defaults rather than refuse such a body."""
    try:
        return json_body(ctx) or {}
    except orjson.JSONDecodeError:
        return {}


def no_jobs_payload() -> list[tuple[str, Any]]:
    """The payload of a data_parser jobs answer that lists nothing."""
    return [
        ("jobs", []),
        ("last_backfill", render4x.num(0)),
        ("last_update", render4x.num(0)),
    ]


def number(v: Any) -> Any:
    """A value, or the ``number`` of a data_parser ``{"set", "number"}`` object."""
    return v.get("number") if isinstance(v, dict) else v


def as_int(v: Any, default: int) -> int:
    """An integer or a string of digits; anything else (a bool too): ``default``."""
    if isinstance(v, bool):
        return default
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return default
