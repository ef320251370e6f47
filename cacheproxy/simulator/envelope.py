"""Response bodies: the per-version envelope around the payload, and errors.

22.05 (v0.0.36-38): ``{"meta", "errors", <payload>}``, meta without a client part.
23.02's v0.0.39: ``{"meta", "errors", "warnings", <payload>}``, ``meta.Slurm``
with integers and a client part holding only ``source`` (openapi/v0.0.39 api.c).
v0.0.40 on: ``{<payload>, "meta", "errors", "warnings"}`` where
``meta.client`` names the requester, so the envelope is built per request
while the (possibly huge) payload members come pre-rendered from a cache.

Versions without templates of their own are rendered from their base version
and shaped to their spec here (``shape.py``); a shaped cached member is kept
as long as the member it came from.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from cacheproxy.core.request import LEGACY_VERSIONS
from cacheproxy.simulator import jsonfmt, render4x, render38
from cacheproxy.simulator.releases import Release, base_version
from cacheproxy.simulator.shape import Shaper
from cacheproxy.simulator.specs import Operation

NOT_FOUND_TEXT = b"Unable find requested URL. Please view /openapi/v3 for API reference."
AUTH_FAILURE_TEXT = b"Authentication failure"


@dataclass
class Response:
    status: int
    chunks: list[bytes]
    content_type: bytes = b"application/json"
    #: Send ``Connection: Close`` and drop the socket (every slurmrestd error does).
    close: bool = False
    #: 22.05's ``304 NOT MODIFIED``: no headers, no body.
    bare: bool = False
    #: Items returned (jobs, nodes, ...): drives the per-item cost.
    items: int = 0

    @property
    def length(self) -> int:
        return sum(len(c) for c in self.chunks)


class Pre:
    """A member already formatted like :func:`jsonfmt.member` (from a render cache).

    A wrapper rather than a ``bytes`` subclass so that a 40 MB job list is
    never copied on its way to the socket.
    """

    __slots__ = ("__weakref__", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass
class Body:
    """What a handler returns before the envelope is put around it."""

    payload: list[tuple[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    items: int = 0
    #: 25.x sometimes puts errors/warnings before meta (e.g. unknown node).
    errors_first: bool = False


@dataclass(frozen=True)
class Requester:
    user: str
    source: str  # "host:port(fd:N)" as meta.client.source


@dataclass(frozen=True)
class Served:
    """The API version a request named, the release serving it and its spec operation."""

    version: str
    release: Release
    operation: Operation | None = None

    @property
    def legacy(self) -> bool:
        return self.version in LEGACY_VERSIONS

    @property
    def base(self) -> str:
        return base_version(self.version)

    def shaper(self) -> Shaper | None:
        """``None`` for a version sent as its base renders it.

        That is every version with templates of its own, and v0.0.36/37: the
        served 22.05 spec does not describe its hand-written plugins (real
        v0.0.38 bodies carry keys and types it does not declare), so shaping to
        it would be less faithful than v0.0.38's real items.
        """
        if self.legacy or self.version == self.base:
            return None
        if self.operation is None or self.operation.schema is None:
            return None
        return Shaper(self.operation.doc, coerce=True)


#: Shaped copies of cached members, dropped with the member they came from.
_SHAPED: weakref.WeakKeyDictionary[Pre, dict[tuple[str, str], bytes]] = weakref.WeakKeyDictionary()


def _member(key: str, value: Any, legacy: bool) -> bytes:
    if isinstance(value, Pre):
        return value.data
    return jsonfmt.member(key, value, legacy)


def _shaped_member(key: str, value: Any, served: Served, shaper: Shaper) -> bytes:
    schema = served.operation.schema if served.operation else None
    if isinstance(value, Pre):
        per_pre = _SHAPED.setdefault(value, {})
        hit = per_pre.get((served.version, key))
        if hit is None:
            parsed = orjson.loads(b"{" + value.data + b"}")[key]
            hit = jsonfmt.member(key, shaper.member(key, parsed, schema), served.legacy)
            per_pre[(served.version, key)] = hit
        return hit
    return jsonfmt.member(key, shaper.member(key, value, schema), served.legacy)


@cache
def _legacy_meta(version: str, family: str, release: str) -> bytes:
    """22.05-era meta: the plugin named by version, ``Slurm`` by release."""
    if version == "v0.0.38" and release == "22.05.8":
        base = render38.META if family == "slurm" else render38.DB_META
        return jsonfmt.member("meta", base, True)
    major, minor, micro = (int(x) for x in release.split("."))
    db = "db" if family == "slurmdb" else ""
    meta = {
        "plugin": {
            "type": f"openapi/{db}{version}",
            "name": f"Slurm OpenAPI {'DB ' if db else ''}{version}",
        },
        "Slurm": {"version": {"major": major, "micro": micro, "minor": minor}, "release": release},
    }
    return jsonfmt.member("meta", meta, True)


def _meta_v39(family: str, release: str, source: str) -> dict[str, Any]:
    major, minor, micro = (int(x) for x in release.split("."))
    db = "db" if family == "slurmdb" else ""
    return {
        "plugin": {
            "type": f"openapi/{db}v0.0.39",
            "name": f"Slurm OpenAPI {'DB ' if db else ''}v0.0.39",
            "data_parser": "data_parser/v0.0.39",
        },
        "client": {"source": source},
        "Slurm": {"version": {"major": major, "micro": micro, "minor": minor}, "release": release},
    }


_LEGACY_NO_ERRORS = jsonfmt.member("errors", [], True)


def render(served: Served, family: str, body: Body, who: Requester, cluster: str) -> Response:
    legacy = served.legacy
    shaper = served.shaper()

    def payload(key: str, value: Any) -> bytes:
        if shaper is None:
            return _member(key, value, legacy)
        return _shaped_member(key, value, served, shaper)

    def listed(key: str) -> bool:
        schema = served.operation.schema if served.operation else None
        return shaper is None or shaper.lists(key, schema)

    members: list[bytes] = []
    if legacy:
        members.append(_legacy_meta(served.version, family, served.release.full))
        members.append(
            jsonfmt.member("errors", body.errors, True) if body.errors else _LEGACY_NO_ERRORS
        )
        members.extend(payload(k, v) for k, v in body.payload if listed(k))
    elif served.version == "v0.0.39":
        members.append(
            jsonfmt.member("meta", _meta_v39(family, served.release.full, who.source), False)
        )
        members.append(jsonfmt.member("errors", body.errors, False))
        members.append(jsonfmt.member("warnings", body.warnings, False))
        members.extend(payload(k, v) for k, v in body.payload if listed(k))
    else:
        meta = render4x.meta(served.version, family, cluster, who.source, served.release)
        tail = [
            payload("meta", meta),
            jsonfmt.member("errors", body.errors, False),
            jsonfmt.member("warnings", body.warnings, False),
        ]
        if body.errors_first:
            tail = [tail[1], tail[2], tail[0]]
        members.extend(payload(k, v) for k, v in body.payload if listed(k))
        members.extend(tail)
    status = body.status
    return Response(
        status=status,
        chunks=jsonfmt.assemble(members),
        close=status >= 400,
        items=body.items,
    )


def error_entry(
    version: str, errno: int, error: str, source: str, description: str | None = None
) -> dict[str, Any]:
    """One entry of ``errors``, keys in slurmrestd's order."""
    e: dict[str, Any] = {}
    if description is not None:
        e["description"] = description
    e["error_number"] = errno
    e["error"] = error
    e["source"] = source
    return e


def not_found() -> Response:
    return Response(404, [NOT_FOUND_TEXT], content_type=b"text/plain", close=True)


def auth_failure() -> Response:
    return Response(401, [AUTH_FAILURE_TEXT], content_type=b"text/plain", close=True)


def not_modified() -> Response:
    return Response(304, [], bare=True)


def plain(status: int, text: str) -> Response:
    return Response(status, [text.encode()], content_type=b"text/plain", close=status >= 400)
