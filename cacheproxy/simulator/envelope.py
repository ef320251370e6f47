"""Response bodies: the per-version envelope around the payload, and errors.

22.05 (v0.0.38): ``{"meta", "errors", <payload>}``, meta without a client part.
25.x (v0.0.43/44): ``{<payload>, "meta", "errors", "warnings"}`` where
``meta.client`` names the requester, so the envelope is built per request
while the (possibly huge) payload members come pre-rendered from a cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cacheproxy.simulator import jsonfmt, render4x, render38
from cacheproxy.simulator.routes import LEGACY

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

    __slots__ = ("data",)

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


def _member(key: str, value: Any, legacy: bool) -> bytes:
    if isinstance(value, Pre):
        return value.data
    return jsonfmt.member(key, value, legacy)


_LEGACY_META = {
    "slurm": jsonfmt.member("meta", render38.META, True),
    "slurmdb": jsonfmt.member("meta", render38.DB_META, True),
}
_LEGACY_NO_ERRORS = jsonfmt.member("errors", [], True)


def render(version: str, family: str, body: Body, who: Requester, cluster: str) -> Response:
    legacy = version == LEGACY
    members: list[bytes] = []
    if legacy:
        # 22.05's meta never changes: formatted once.
        members.append(_LEGACY_META[family])
        members.append(
            jsonfmt.member("errors", body.errors, True) if body.errors else _LEGACY_NO_ERRORS
        )
        members.extend(_member(k, v, True) for k, v in body.payload)
    else:
        meta = render4x.meta(version, family, cluster, who.source, who.user)
        tail = [
            jsonfmt.member("meta", meta, False),
            jsonfmt.member("errors", body.errors, False),
            jsonfmt.member("warnings", body.warnings, False),
        ]
        if body.errors_first:
            tail = [tail[1], tail[2], tail[0]]
        members.extend(_member(k, v, False) for k, v in body.payload)
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
