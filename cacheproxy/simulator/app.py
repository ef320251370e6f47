"""The raw ASGI application of the simulated slurmrestd.

Raw ASGI (no framework) so that nothing adds headers: slurmrestd sends only
``Content-Type`` and ``Content-Length`` (plus ``Connection: Close`` on every
error, after which it drops the socket), and a 22.05 ``304`` has no headers
at all.  The order of checks follows the real daemon: route lookup (404),
then authentication (401 in slurmrestd itself; a bad token costs a trip to
slurmctld, then 500 on 22.05 or 511 on 25.x), then the operation under the
simulated controller lock.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson

from cacheproxy.simulator import envelope, render4x
from cacheproxy.simulator.auth import Authenticator, AuthError, first_headers
from cacheproxy.simulator.config import SimConfig
from cacheproxy.simulator.cost import make_cost
from cacheproxy.simulator.envelope import Body, Requester, Response, error_entry
from cacheproxy.simulator.model import Cluster
from cacheproxy.simulator.routes import LEGACY, OPENAPI_PATHS, Match, match, split_path
from cacheproxy.simulator.stats import Stats
from cacheproxy.simulator.views import Ctx, RenderCache, SlurmViews
from cacheproxy.simulator.views_db import ADMIN_ONLY, DbViews

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Operations that change controller state: they take the lock exclusively.
WRITE_OPS = frozenset(
    {
        "job_submit",
        "job_update",
        "job_cancel",
        "jobs_delete",
        "node_update",
        "reservation_create",
        "reservation_delete",
        "reconfigure",
    }
)
#: Payload key of each read, for the empty list that goes with an error body.
PAYLOAD_KEY = {
    "jobs": "jobs",
    "job": "jobs",
    "jobs_state": "jobs",
    "nodes": "nodes",
    "node": "nodes",
    "partitions": "partitions",
    "partition": "partitions",
    "reservations": "reservations",
    "reservation": "reservations",
    "licenses": "licenses",
    "ping": "pings",
}
#: The Slurm call named in a rejected-token error (as slurmrestd does).
SOURCE = {
    "jobs": "slurm_load_jobs",
    "job": "slurm_load_job",
    "nodes": "slurm_load_node",
    "node": "slurm_load_node",
    "partitions": "slurm_load_partitions",
    "partition": "slurm_load_partitions",
    "reservations": "slurm_load_reservations",
    "reservation": "slurm_load_reservations",
    "licenses": "slurm_load_licenses",
    "ping": "slurm_ping",
    "diag": "slurm_get_statistics",
}
ACCEPTED_TYPES = {"", "*/*", "application/json", "application/*", "application/x-yaml"}


def _find_openapi(style: str) -> Path | None:
    """The spec file from the shared folder, if present (it is not shipped)."""
    name = (
        "openapi-v0.0.44.json"
        if style == "25.x"
        else "openapi-debian12-slurmrestd-22.05.8-served.json"
    )
    env = os.environ.get("CACHEPROXY_SIM_OPENAPI")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    for parent in here.parents[:5]:
        candidates.append(parent / "shared" / "slurm-openapi" / name)
        candidates.append(parent.parent / "shared" / "slurm-openapi" / name)
    return next((p for p in candidates if p.is_file()), None)


class Simulator:
    """A simulated slurmrestd: ``Simulator(config)`` is an ASGI application.

    ``time_offset`` moves the simulated clock forward (``advance``) so tests
    can make jobs progress without waiting.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.time_offset = 0.0
        self.stats = Stats()
        self.cluster = Cluster(self.config, self.now)
        self.cost = make_cost(
            self.config.cost_model, self.config.cost, self.stats, self.config.seed
        )
        self.auth = Authenticator(self.config.users)
        self.cache = RenderCache()
        self.slurm = SlurmViews(self.cluster, self.cache)
        self.db = DbViews(self.cluster, self.cache)
        self._fds: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._next_fd = 8
        self._openapi: bytes | None = None

    # ------------------------------------------------------------------ time
    def now(self) -> float:
        return time.time() + self.time_offset

    def advance(self, seconds: float) -> None:
        """Move the simulated clock forward and apply the job events now due."""
        self.time_offset += seconds
        self.cluster.advance()

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            response = await self.handle(scope, receive)
        except Exception:
            # A bug here must still look like a daemon error, not a hang.
            log.exception("simulator failed on %s %s", scope.get("method"), scope.get("path"))
            response = envelope.plain(500, "Internal simulator error")
        await self._send(scope, response, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive: Receive) -> bytes:
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _source(self, scope: Scope) -> str:
        """``meta.client.source``: peer address plus a stable per-connection fd."""
        client = scope.get("client") or ("unix", 0)
        key = (str(client[0]), int(client[1]))
        fd = self._fds.get(key)
        if fd is None:
            fd = self._next_fd
            self._next_fd = 8 + (self._next_fd - 7) % 4096
            self._fds[key] = fd
            if len(self._fds) > 4096:
                self._fds.popitem(last=False)
        host = key[0] if ":" not in key[0] else f"[{key[0]}]"
        return f"{host}:{key[1]}(fd:{fd})"

    async def handle(self, scope: Scope, receive: Receive) -> Response:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        segments = split_path(raw_path)
        method = scope["method"]
        query = dict(
            parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        )
        if segments[:1] == ["_sim"]:
            return await self._sim_endpoint(segments[1:], method, query, receive)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}  # Accept: the last wins
        first = first_headers(scope.get("headers", []))  # credentials: the first wins
        body = await self._read_body(receive)
        if method == "HEAD":
            self.stats.count(method, "(unknown)")
            return Response(411, [], content_type=b"text/plain", close=True)
        accept = headers.get(b"accept", b"").decode("latin-1").split(";")[0].strip().lower()
        if tuple(segments) in OPENAPI_PATHS:
            self.stats.count(method, "/" + "/".join(segments))
            return await self._openapi_response(first)
        found = match(segments, method, self.config.versions)
        if found is None:
            self.stats.count(method, "(unknown)")
            return envelope.not_found()
        self.stats.count(method, found.route.template())
        if accept and accept not in ACCEPTED_TYPES and not accept.startswith("application/json"):
            return envelope.plain(415, "")
        modern = found.version != LEGACY
        try:
            identity = self.auth.authenticate(first, "23.11" if modern else "22.05")
        except AuthError as exc:
            if exc.missing:
                return envelope.auth_failure()
            await self.cost.auth_reject()
            return self._rejected(found, exc.claimed_user, scope)
        if body.strip() and method in ("POST", "DELETE"):
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                return envelope.plain(400, "Unable to parse query.")
        return await self._operate(found, identity.user, query, body, scope)

    def _rejected(self, found: Match, claimed: str, scope: Scope) -> Response:
        """A token slurmctld refuses: 22.05 -> 500 (-1), 25.x -> 511 (1007)."""
        key = PAYLOAD_KEY.get(found.operation)
        source = SOURCE.get(found.operation, "slurm_" + found.operation)
        if found.version == LEGACY:
            body = Body(
                payload=[(key, [])] if key else [],
                errors=[error_entry(found.version, -1, "Unspecified error", source)],
                status=500,
            )
        else:
            payload: list[tuple[str, Any]] = [(key, [])] if key else []
            if key == "jobs":
                payload += [("last_backfill", render4x.num(0)), ("last_update", render4x.num(0))]
            body = Body(
                payload=payload,
                errors=[
                    error_entry(
                        found.version,
                        1007,
                        "Protocol authentication error",
                        source + "()",
                        f"Unable to query {key or found.operation}",
                    )
                ],
                status=511,
            )
        who = Requester(claimed, self._source(scope))
        return envelope.render(
            found.version, found.route.family, body, who, self.config.cluster_name
        )

    async def _operate(
        self, found: Match, user: str, query: dict[str, str], body: bytes, scope: Scope
    ) -> Response:
        self.cluster.advance()
        ctx = Ctx(
            version=found.version,
            family=found.route.family,
            params=found.params,
            query=query,
            body=body,
            user=user,
            viewer=self.cluster.viewer_for(user),
            client_requests=self.stats.total,
        )
        who = Requester(user, self._source(scope))
        op = found.operation

        def run() -> Response:
            views: SlurmViews | DbViews = self.db if found.route.family == "slurmdb" else self.slurm
            if op in ADMIN_ONLY and not self.cluster.is_admin(user):
                result: Body | Response = self.db.denied(ctx, op.removeprefix("db_"))
            else:
                result = getattr(views, op)(ctx)
            if isinstance(result, Response):
                return result
            return envelope.render(ctx.version, ctx.family, result, who, self.config.cluster_name)

        if found.route.family == "slurmdb":
            kind = op.removeprefix("db_")
            if kind.endswith(("_add", "_delete")):
                kind = "write"
            await self.cost.dbd(kind)
            response = run()
        else:
            response = await self.cost.locked(op in WRITE_OPS, run, lambda r: r.items)
        self._trim_caches()
        return response

    def _trim_caches(self) -> None:
        limit = 8 * (len(self.cluster.history) + 16)
        if self.cache.job_fragments > limit:
            self.cache.forget_jobs(set(self.cluster.history))

    async def _openapi_response(self, headers: dict[bytes, bytes]) -> Response:
        # 22.05 wants authentication on the spec endpoints; 25.x does not.
        if self.config.style != "25.x":
            try:
                self.auth.authenticate(headers, "22.05")
            except AuthError:
                return envelope.auth_failure()
        if self._openapi is None:
            path = _find_openapi(self.config.style)
            self._openapi = path.read_bytes() if path else self._generated_openapi()
        return Response(200, [self._openapi])

    def _generated_openapi(self) -> bytes:
        from cacheproxy.simulator.routes import ROUTES

        paths: dict[str, dict[str, Any]] = {}
        for version in sorted(self.config.versions):
            for r in ROUTES:
                if version in r.versions:
                    p = paths.setdefault(f"/{r.family}/{version}/" + "/".join(r.pattern), {})
                    for method, op in r.methods.items():
                        p[method.lower()] = {"operationId": op}
        doc = {
            "openapi": "3.0.2",
            "info": {"title": "Slurm Rest API (simulated)", "version": "sim"},
            "paths": paths,
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)

    async def _sim_endpoint(
        self, rest: list[str], method: str, query: dict[str, str], receive: Receive
    ) -> Response:
        await self._read_body(receive)
        if rest == ["stats"] and method == "GET":
            return Response(200, [orjson.dumps(self.stats.snapshot())])
        if rest == ["reset"] and method == "POST":
            self.stats.reset()
            return Response(200, [orjson.dumps(self.stats.snapshot())])
        if rest == ["advance"] and method == "POST":
            try:
                seconds = float(query.get("seconds", "0"))
            except ValueError:
                return envelope.plain(400, "seconds must be a number")
            self.advance(seconds)
            return Response(200, [orjson.dumps({"time": self.now()})])
        return envelope.not_found()

    async def _send(self, scope: Scope, response: Response, send: Send) -> None:
        if response.bare:
            await send({"type": "http.response.start", "status": response.status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [
            (b"Content-Type", response.content_type),
            (b"Content-Length", str(response.length).encode()),
        ]
        if response.close:
            headers.append((b"Connection", b"Close"))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        chunks = [c for c in response.chunks if c]
        if not chunks:
            await send({"type": "http.response.body", "body": b""})
            return
        for i, chunk in enumerate(chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1}
            )
