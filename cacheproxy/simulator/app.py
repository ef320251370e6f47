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
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from cacheproxy.core.request import LEGACY_VERSIONS
from cacheproxy.simulator import auth, envelope, render4x, rpcqueue
from cacheproxy.simulator.auth import Authenticator, AuthError, first_headers
from cacheproxy.simulator.config import SimConfig
from cacheproxy.simulator.conmgr import Conmgr
from cacheproxy.simulator.cost import make_cost
from cacheproxy.simulator.envelope import Body, Requester, Response, Served, error_entry
from cacheproxy.simulator.model import Cluster
from cacheproxy.simulator.query import integer, merged_openapi, request_query
from cacheproxy.simulator.ratelimit import RateLimiter
from cacheproxy.simulator.releases import Release, base_version
from cacheproxy.simulator.routes import OPENAPI_PATHS, Match, match, split_path
from cacheproxy.simulator.stats import Stats
from cacheproxy.simulator.viewctx import Ctx, RenderCache
from cacheproxy.simulator.views import SlurmViews
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
#: v0.0.36-v0.0.38 reads whose ``update_time`` goes through ``get_date_param()``.
DATE_PARAM_OPS = frozenset({"jobs", "nodes", "partitions", "reservations"})
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


def auth_rules(release: Release) -> auth.Release:
    """Which of the JWT plugin's behaviours (:mod:`~cacheproxy.simulator.auth`)
    a release has: Bearer and an optional name came with 23.11, the
    router's own refusal texts with 25.11."""
    if not release.bearer:
        return "22.05"
    return "25.11" if release.number >= (25, 11, 0) else "23.11"


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
        self.served = self.config.served
        self.auth = Authenticator(self.config.users)
        self.cache = RenderCache()
        self.slurm = SlurmViews(self.cluster, self.cache)
        self.db = DbViews(self.cluster, self.cache)
        self._fds: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._next_fd = 8
        self._openapi: bytes | None = None
        self.conmgr = Conmgr(self.config.max_connections, self.config.worker_threads)
        self.limiter = (
            RateLimiter(self.config.rl_bucket_size, self.config.rl_refill_rate)
            if self.config.rate_limit
            else None
        )
        self.rpc_queues = (
            rpcqueue.RpcQueues(self.config.rpc_queue_hard_drop)
            if self.config.rpc_queue_hard_drop > 0
            else None
        )

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
        async with self.conmgr.worker():
            return await self._handle_api(scope, receive, segments, method, query)

    async def _handle_api(
        self,
        scope: Scope,
        receive: Receive,
        segments: list[str],
        method: str,
        query: dict[str, str],
    ) -> Response:
        """A request on one of slurmrestd's worker threads."""
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
        found = match(segments, method, self.served)
        if found is None:
            self.stats.count(method, "(unknown)")
            return envelope.not_found()
        self.stats.count(method, found.route.template())
        if accept and accept not in ACCEPTED_TYPES and not accept.startswith("application/json"):
            return envelope.plain(415, "")
        try:
            # The release decides the JWT plugin's rules (simulator/auth.py).
            rules = auth_rules(found.release)
            identity = self.auth.authenticate(first, rules)
        except AuthError as exc:
            if exc.missing:
                status, text = auth.refusal(rules, exc.kind)
                return envelope.plain(status, text.decode())
            await self.cost.auth_reject(f"{method} {found.route.template()}")
            return self._rejected(found, exc.claimed_user, scope)
        raw_query = scope.get("query_string", b"")
        parsed = request_query(found, method, query, bool(raw_query), body)
        if isinstance(parsed, Response):
            return parsed
        return await self._operate(found, identity.user, parsed, body, scope)

    def _rejected(self, found: Match, claimed: str, scope: Scope) -> Response:
        """A token slurmctld refuses: 22.05 -> 500 (-1), 25.x -> 511 (1007)."""
        key = PAYLOAD_KEY.get(found.operation)
        source = SOURCE.get(found.operation, "slurm_" + found.operation)
        if found.version in LEGACY_VERSIONS:
            error = error_entry(found.version, -1, "Unspecified error", source)
            return self._failed(found, Requester(claimed, self._source(scope)), error, 500)
        error = error_entry(
            found.version,
            1007,
            "Protocol authentication error",
            source + "()",
            f"Unable to query {key or found.operation}",
        )
        return self._failed(found, Requester(claimed, self._source(scope)), error, 511)

    def _dropped(self, found: Match, who: Requester) -> Response:
        """slurmctld's full RPC queue dropped the read (rpcqueue.py): 500.

        As the 24.05-26.05 handlers report it: ``/jobs`` and ``/job`` dump
        their empty list with the error; ``/nodes`` and ``/partition`` stop
        before dumping (the error alone); ``/partitions`` says nothing at all
        until 26.05 added its ``resp_error()`` (``errors: []``).
        """
        op = found.operation
        errors: list[dict[str, Any]] = []
        if op != "partitions" or found.release.number >= (26, 5, 0):
            source, why = rpcqueue.FAILURE[op]
            name = next(iter(found.params.values()), "")
            errors.append(
                error_entry(
                    found.version,
                    rpcqueue.HARD_DROP,
                    rpcqueue.HARD_DROP_TEXT,
                    source,
                    why.format(name),
                )
            )
        if op in ("jobs", "job"):
            return self._failed(found, who, errors[0], 500)
        body = Body(payload=[], errors=errors, status=500)
        return envelope.render(
            _served(found), found.route.family, body, who, self.config.cluster_name
        )

    def _failed(self, found: Match, who: Requester, error: dict[str, Any], status: int) -> Response:
        """A read whose RPC failed: its empty list (and, for jobs in the
        data_parser versions, zero times) with ``error``."""
        key = PAYLOAD_KEY.get(found.operation)
        payload: list[tuple[str, Any]] = [(key, [])] if key else []
        if key == "jobs" and found.version not in LEGACY_VERSIONS:
            payload += [("last_backfill", render4x.num(0)), ("last_update", render4x.num(0))]
        body = Body(payload=payload, errors=[error], status=status)
        return envelope.render(
            _served(found), found.route.family, body, who, self.config.cluster_name
        )

    async def _operate(
        self, found: Match, user: str, query: dict[str, str], body: bytes, scope: Scope
    ) -> Response:
        self.cluster.advance()
        ctx = Ctx(
            version=base_version(found.version),
            api_version=found.version,
            family=found.route.family,
            params=found.params,
            query=query,
            body=body,
            user=user,
            viewer=self.cluster.viewer_for(user),
            client_requests=self.stats.total,
            daemon=found.release.number,
        )
        who = Requester(user, self._source(scope))
        op = found.operation
        route = f"{scope['method']} {found.route.template()}"
        if ctx.legacy and op in DATE_PARAM_OPS and not integer(query.get("update_time", "0")):
            # get_date_param(): ESLURM_REST_INVALID_QUERY with no error entry.
            refused = Body(payload=[(PAYLOAD_KEY[op], [])], status=ctx.invalid_query_status)
            return envelope.render(
                _served(found), ctx.family, refused, who, self.config.cluster_name
            )

        def run() -> Response:
            views: SlurmViews | DbViews = self.db if found.route.family == "slurmdb" else self.slurm
            if op in ADMIN_ONLY and not self.cluster.is_admin(user):
                result: Body | Response = self.db.denied(ctx, op.removeprefix("db_"))
            else:
                result = getattr(views, op)(ctx)
            if isinstance(result, Response):
                return result
            return envelope.render(
                _served(found), ctx.family, result, who, self.config.cluster_name
            )

        if self.limiter is not None and found.route.family == "slurm":
            # slurmctld's limit, retried inside slurmrestd: a delay, not an error.
            await self.limiter.admit(user, found.release)
        queues = self.rpc_queues
        rpc = None
        if queues is not None and found.route.family == "slurm":
            rpc = queues.enter(op, found.release.number)
            if rpc == "":
                return self._dropped(found, who)
        try:
            return await self._run(found, op, run, route)
        finally:
            if queues is not None and rpc:
                queues.leave(rpc)

    async def _run(
        self, found: Match, op: str, run: Callable[[], Response], route: str
    ) -> Response:
        """``run`` as slurmdbd or slurmctld would cost it."""
        if found.route.family == "slurmdb":
            kind = op.removeprefix("db_")
            if kind.endswith(("_add", "_delete")):
                kind = "write"
            await self.cost.dbd(kind, route)
            response = run()
        else:
            response = await self.cost.locked(op in WRITE_OPS, run, lambda r: r.items, route)
        self._trim_caches()
        return response

    def _trim_caches(self) -> None:
        limit = 8 * (len(self.cluster.history) + 16)
        if self.cache.job_fragments > limit:
            self.cache.forget_jobs(set(self.cluster.history))

    async def _openapi_response(self, headers: dict[bytes, bytes]) -> Response:
        # Before 23.11 the spec endpoints want authentication; from 23.11 on they do not.
        if any(not r.bearer for r in self.served.values()):
            try:
                self.auth.authenticate(headers, "22.05")
            except AuthError:
                return envelope.auth_failure()
        if self._openapi is None:
            self._openapi = merged_openapi(sorted(self.served))
        return Response(200, [self._openapi])

    async def _sim_endpoint(
        self, rest: list[str], method: str, query: dict[str, str], receive: Receive
    ) -> Response:
        await self._read_body(receive)
        if rest == ["stats"] and method == "GET":
            snapshot = self.stats.snapshot()
            if self.limiter is not None:
                snapshot["rl_backoffs"] = self.limiter.backoffs
            snapshot.update(self.conmgr.snapshot())
            if self.rpc_queues is not None:
                snapshot["rpc_hard_drops"] = self.rpc_queues.dropped
            return Response(200, [orjson.dumps(snapshot)])
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


def _served(found: Match) -> Served:
    return Served(found.version, found.release, found.spec)
