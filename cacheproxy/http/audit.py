"""The audit of shared views, carried out: the fetch as a second user, the
comparison, the demotion, and its spread to every replica.  When and what a
comparison means is :mod:`cacheproxy.core.audit` (read it first: why the
pair is the fill and the next different user's request within a second,
and why no token is kept for it).

* A sampled fill of a shared entry (:meth:`Auditor.filled`, called by the
  filler) arms the route: the entry's body, its times and its filler's
  user (a name, never a credential) are kept for ``window`` seconds.
* The next shared answer of that entry to another accepted user
  (:meth:`Auditor.on_shared`, on the hit path only while something is armed
  or a Redis check is due: one float comparison otherwise) sends that
  user's own request upstream in the background, through the same
  transport as every fetch (its concurrency limit, queue and circuit
  breaker), while the user is answered from the entry at once.  At most
  :data:`MAX_AUDITS` run at a time; each task is referenced until it ends.
* The verdict goes to the book; a demotion turns the route per user in
  :class:`~cacheproxy.http.sitescope.SiteScopes` for this process's life,
  is logged as an error, counted (``cacheproxy_shared_audits_total``,
  ``cacheproxy_shared_routes_demoted``, the status page), and published in
  Redis (:mod:`cacheproxy.store.demotions`), which every replica reads at
  most every :data:`SYNC_SECONDS` on its shared answers.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from cacheproxy.core import audit, policy, privatedata
from cacheproxy.core.audit import AuditBook, Pairing, Verdict
from cacheproxy.core.plan import GetPlan
from cacheproxy.core.request import BadRequest, ProxyRequest, from_scope
from cacheproxy.http.fill import UPDATE_TIME_MARGIN
from cacheproxy.http.forward import upstream_headers
from cacheproxy.http.respond import Scope
from cacheproxy.http.sitescope import SiteScopes
from cacheproxy.stats import Stats
from cacheproxy.store.base import Entry, StoreError
from cacheproxy.store.demotions import DemotionBoard
from cacheproxy.upstream.base import Transport, UpstreamError, UpstreamRequest

log = logging.getLogger("cacheproxy.audit")

MAX_AUDITS = 4
"""Audit fetches in flight at once (one per route at most anyway)."""
SYNC_SECONDS = 2.0
"""Seconds between two reads of the replicas' demotions in Redis."""
THREAD_COMPARE_BYTES = 256 * 1024
"""Bodies from this size are compared off the event loop."""


class Auditor:
    """Audits shared entries (see the module docstring); owns its tasks."""

    def __init__(
        self,
        *,
        transport: Transport,
        stats: Stats,
        scopes: SiteScopes,
        clock: Callable[[], float],
        upstream_host: bytes,
        max_body_bytes: int,
        rate: float = audit.DEFAULT_RATE,
        window: float = audit.DEFAULT_WINDOW,
        board: DemotionBoard | None = None,
        sync_seconds: float = SYNC_SECONDS,
    ) -> None:
        self.transport = transport
        self.stats = stats
        self.scopes = scopes
        self.clock = clock
        self.upstream_host = upstream_host
        self.max_body_bytes = max_body_bytes
        self.book = AuditBook(rate, window)
        self.board = board
        self.sync_seconds = sync_seconds
        self._next_sync = 0.0
        self._syncing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.wake_at = -math.inf if board is not None else math.inf
        """The hit path calls :meth:`on_shared` once its clock reaches this:
        -inf while a fill is armed, the next Redis check otherwise (inf:
        nothing to do)."""

    # -- hooks -------------------------------------------------------------------
    def filled(self, route: str, key: bytes, filler: str | None, entry: Entry) -> None:
        """A shared entry was stored from upstream's answer of this moment:
        fetched whole by ``filler`` (a user), or revalidated (None: slurmctld
        said the list is unchanged, so the stored body is current).  Not one
        read from a peer replica: when it was fetched is not known here."""
        if route in self.scopes.demoted:
            return
        if self.book.filled(
            route, key, filler, entry.origin, entry.stored_at, entry.status, entry.body
        ):
            self.wake_at = -math.inf

    def on_shared(self, plan: GetPlan, scope: Scope, now: float) -> None:
        """A shared entry is being answered to ``plan``'s accepted
        credential: start a due Redis check, and the audit this request
        completes, if any.  Never awaits, never raises into the request."""
        if self.board is not None and now >= self._next_sync and not self._syncing:
            self._next_sync = now + self.sync_seconds
            self._syncing = True
            self._spawn(self._sync())
        book = self.book
        if book.armed:
            pairing = book.take(plan.match.name, plan.key, plan.identity.user, now)
            if pairing is not None and len(self._tasks) < MAX_AUDITS:
                try:
                    req = from_scope(scope, (plan.route.segments, plan.route.query), plan.view)
                except BadRequest:  # (planned already: not expected)
                    req = None
                if req is not None:
                    rule = plan.match.rule
                    revalidates = rule is not None and rule.revalidate is not None
                    self._spawn(self._audit(pairing, req, revalidates))
            book.expire(now)
        self.wake_at = -math.inf if book.armed else self._next_sync if self.board else math.inf

    async def idle(self) -> None:
        """Wait for the audits and checks running now (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.idle()

    # -- the audit ----------------------------------------------------------------
    async def _audit(self, pairing: Pairing, req: ProxyRequest, revalidates: bool) -> None:
        """Fetch ``req`` as its own user, compare with the pairing's fill;
        a difference on a list slurmctld can say is unchanged
        (``update_time``) counts only if it says so: then no job, node or
        reservation changed between the two fetches, and the difference is
        the view's (one more cheap request, only when answers differ)."""
        verdict = Verdict.INCONCLUSIVE
        got = await self._get(req, pairing.route, req.raw_target)
        if got is not None and pairing.same_moment(got[2]):
            verdict = await self._compare(pairing, got[0], got[1])
        if verdict is Verdict.DIFFERENT and revalidates:
            since = int(pairing.origin) - UPDATE_TIME_MARGIN
            sep = "&" if "?" in req.raw_target else "?"
            check = await self._get(req, pairing.route, f"{req.raw_target}{sep}update_time={since}")
            unchanged = check is not None and (
                check[0] == 304 or (check[1] is not None and policy.no_changes(check[1]))
            )
            if not unchanged:
                verdict = Verdict.INCONCLUSIVE
        self._decided(pairing, req, verdict)

    async def _get(
        self, req: ProxyRequest, route: str, target: str
    ) -> tuple[int, bytes | None, float] | None:
        """GET ``target`` upstream as ``req``'s user: status, body (None:
        too big) and when the head came; None on an upstream failure."""
        self.stats.upstream_requests[route] += 1
        up = UpstreamRequest(
            method="GET",
            target=target,
            headers=upstream_headers(req, self.upstream_host, None),
            retry_on_stale_connection=True,
        )
        try:
            resp = await self.transport.send(up)
            try:
                answered_at = self.clock()
                body = await _read(resp.aiter_body(), self.max_body_bytes)
            finally:
                await resp.aclose()
        except UpstreamError:
            return None
        return resp.status, body, answered_at

    @staticmethod
    async def _compare(pairing: Pairing, status: int, body: bytes | None) -> Verdict:
        big = max(len(pairing.body), len(body or b"")) >= THREAD_COMPARE_BYTES
        if big:
            return await asyncio.to_thread(
                audit.compare, pairing.status, pairing.body, status, body
            )
        return audit.compare(pairing.status, pairing.body, status, body)

    def _decided(self, pairing: Pairing, req: ProxyRequest, verdict: Verdict) -> None:
        route = pairing.route
        self.stats.shared_audits[(route, verdict.value)] += 1
        if route in self.scopes.demoted:
            return
        demote = self.book.decided(route, verdict)
        if demote:
            self.demote(route, f"two users got different answers to {req.raw_target} twice")
        elif verdict is Verdict.DIFFERENT:
            log.warning(
                "shared route %s: two users got different answers to %s at the same "
                "moment; re-checking at its next fill before turning it per user",
                route,
                req.raw_target,
            )

    def demote(self, route: str, why: str, *, publish: bool = True) -> None:
        """Turn ``route`` per user for this process's life (and, ``publish``,
        for every replica reading the same Redis)."""
        if route in self.scopes.demoted:
            return
        self.scopes.demote(route)
        self.book.armed.pop(route, None)
        self.book.suspect.discard(route)
        self.stats.demoted_routes[route] = why
        log.error(
            "shared route %s turned per user: %s. The PrivateData the proxy was told "
            "(%s) does not match slurmctld's or slurmdbd's: correct --private-data or "
            "slurm.conf (docs/OPERATIONS.md, 'Shared views: the audit')",
            route,
            why,
            self._setting(),
        )
        if publish and self.board is not None:
            self._spawn(self._publish(route))

    # -- replicas -----------------------------------------------------------------
    def _setting(self) -> str:
        """The ``PrivateData`` this process was told, as one string: the
        Redis set's name (replicas told the same share one)."""
        words = [self.scopes.private_for(family) for family in ("slurm", "slurmdb")]
        return "|".join("?" if w is None else privatedata.spell(w) for w in words)

    async def _publish(self, route: str) -> None:
        assert self.board is not None
        try:
            await self.board.add(self._setting(), route)
        except StoreError as exc:
            self.stats.store_errors += 1
            log.warning("shared route %s: demotion not published to Redis: %s", route, exc)

    async def _sync(self) -> None:
        assert self.board is not None
        try:
            routes = await self.board.routes(self._setting())
        except StoreError:
            self.stats.store_errors += 1
            return
        finally:
            self._syncing = False
        for route in sorted(routes - self.scopes.demoted):
            self.demote(route, "demoted by another replica's audit", publish=False)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, referenced until it ends (the loop
        keeps only weak references); a bug in it is logged, never raised."""
        task = asyncio.get_running_loop().create_task(_logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _logged(coro: Coroutine[Any, Any, None]) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("shared-view audit failed (the requests it audited were answered)")


async def _read(chunks: Any, limit: int) -> bytes | None:
    """The whole body, or None past ``limit`` bytes (the rest is not read)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)
