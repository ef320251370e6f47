"""The admin API under ``/_cacheproxy/admin/``: purge and detailed stats.

Off unless ``admin_token`` is set: the routes then answer 404, as if they did
not exist.  With a token, a request needs ``Authorization: Bearer <token>``:
without one it gets 401, with a wrong one 403.  The comparison is constant
time, and the token is never logged.  Both refusals count as authentication
failures of the client's address in :class:`cacheproxy.http.guard.AuthGuard`
(``auth_fail_limit``), so guessing the token is blocked like guessing a
user's; the guard knows these routes by
:data:`cacheproxy.ops.paths.ADMIN_PREFIX`.

A purge is a tag bump, exactly what a write does, so it is O(1) whatever the
cache holds, and with a shared tier it reaches every replica at once.  Without
one, it reaches only the process that served it (with ``--workers N`` and no
Redis, repeat it or restart).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cacheproxy.ops.paths import ADMIN_PREFIX
from cacheproxy.ops.readiness import Readiness
from cacheproxy.ops.report import Report, RuleSummary, StoreUnavailable

log = logging.getLogger("cacheproxy.admin")

Name = Annotated[str, StringConstraints(min_length=1, max_length=512)]
_MAX_ITEMS = 1000


class PurgeRequest(BaseModel):
    """What to purge; any combination (the union is purged)."""

    model_config = ConfigDict(extra="forbid")

    tags: list[Name] = Field(default_factory=list, max_length=_MAX_ITEMS)
    """Tags as rules write them (``jobs``, ``job:123``, ``@slurmdb``)."""
    routes: list[Name] = Field(default_factory=list, max_length=_MAX_ITEMS)
    """Rule names: their tags are purged (shared tags purge other rules too)."""
    users: list[Name] = Field(default_factory=list, max_length=_MAX_ITEMS)
    """User names: every entry cached for them."""
    all: bool = False
    """Everything (``@all``)."""


def route_tags(rules: Sequence[RuleSummary], name: str) -> list[str]:
    """The tags to bump to purge what rule ``name`` cached.

    Templated tags (``job:{job_id:base}``) name one object each and cannot
    be bumped for all objects; such a rule is purged through its other tags
    or, failing those, its whole family (``@slurm``): when in doubt, purge more.
    """
    matching = [r for r in rules if r.name == name]
    if not matching:
        raise HTTPException(400, f"unknown rule {name!r}")
    cached = [r for r in matching if r.cache]
    if not cached:
        raise HTTPException(400, f"rule {name!r} caches nothing")
    out: list[str] = []
    for rule in cached:
        static = [t for t in rule.tags if "{" not in t]
        if static:
            out += static
        else:
            out.append("@" + rule.path.strip("/").split("/", 1)[0])
    return out


def _bearer(request: Request) -> str | None:
    values = request.headers.getlist("authorization")
    if len(values) != 1:
        return None
    scheme, _, token = values[0].partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def admin_router(report: Report, prefix: str, readiness: Readiness) -> APIRouter:
    """The admin routes under ``<prefix>/admin``."""

    async def require_admin(request: Request) -> None:
        expected = report.admin_token
        if not expected:
            raise HTTPException(404, "Not Found")
        token = _bearer(request)
        if token is None:
            raise HTTPException(
                401,
                "admin token required: Authorization: Bearer <admin_token>",
                headers={"WWW-Authenticate": 'Bearer realm="cacheproxy-admin"'},
            )
        if not hmac.compare_digest(token.encode(), expected.encode()):
            client = request.client.host if request.client else "?"
            log.warning("admin API: wrong token from %s", client)
            raise HTTPException(403, "wrong admin token")

    router = APIRouter(prefix=prefix + ADMIN_PREFIX, dependencies=[Depends(require_admin)])

    @router.post("/purge")
    async def purge(body: PurgeRequest) -> JSONResponse:
        """Invalidate entries by tag, rule, user, or all of them."""
        if not report.started:
            raise HTTPException(503, "proxy not started")
        if not (body.tags or body.routes or body.users or body.all):
            raise HTTPException(400, "nothing to purge: give tags, routes, users or all")
        tags: list[str] = list(body.tags)
        for name in body.routes:
            tags += route_tags(report.rules(), name)
        for user in body.users:
            tag = report.user_tag(user)
            if tag is None:
                raise HTTPException(
                    501, "purge by user needs per-user tags, which this proxy does not add yet"
                )
            tags.append(tag)
        if body.all:
            tags.append(report.all_tag)
        unique = list(dict.fromkeys(tags))
        try:
            await report.purge(unique)
        except StoreUnavailable as exc:
            raise HTTPException(503, f"cache store unavailable: {exc}") from None
        log.info("admin purge: %d tag(s)", len(unique))
        return JSONResponse(
            {"purged": unique, "scope": "shared" if report.shared_store else "process"}
        )

    @router.get("/stats")
    async def stats() -> JSONResponse:
        """Everything in the public stats, unfolded tags, settings (secrets
        masked), readiness and the cached rules."""
        snap: dict[str, Any] = report.stats.snapshot(raw_tags=True)
        if report.started:
            snap["store"] = report.store_state()
            snap["transport"] = report.transport_state()
            snap["shared_store"] = report.shared_store
            snap["user_purge"] = report.user_purge
            snap["rules"] = [
                {"name": r.name, "path": r.path, "ttl": r.ttl, "tags": list(r.tags)}
                for r in report.rules()
                if r.cache
            ]
        last = readiness.last
        snap["ready"] = last.to_json() if last is not None else None
        snap["settings"] = dict(report.settings_summary())
        return JSONResponse(snap)

    return router
