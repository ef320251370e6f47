"""The proxied path, as a raw ASGI app.

request -> identity -> rule -> key -> store -> coalescing -> upstream -> response

Where each step lives:

* ``plan.py``: request -> identity -> rule -> key, from one scan of the
  headers (routes and keys memoised);
* ``proxy.py`` (here): the ASGI entry and the fast lane's hits; store ->
  coalescing: the lookup, hit or miss, one flight per key;
* ``fill.py``: upstream, for a miss: one fetch feeds the flight and the
  store (revalidated with ``update_time``; one replica at a time per key);
* ``credentials.py``: what upstream's answer says of the credential;
* ``forward.py``: everything the cache does not serve (uncached GETs on the
  fast lane too), writes' invalidation;
* ``stale.py``: an expired entry standing in for upstream;
* ``answer.py``: the response, marked in ``Cache-Status``;
* ``policy.py``: what to cache and when it is fresh (no I/O).

Raw ASGI rather than a framework route: a framework's routing, request and
response objects cost about three quarters of the hit path's throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cacheproxy.core import decide, policy
from cacheproxy.core.identity import IdentityResolver
from cacheproxy.core.plan import GetPlan, Planner, Route
from cacheproxy.core.request import from_scope
from cacheproxy.core.rules import Match, RuleSet
from cacheproxy.http.answer import hit_response, send_entry, send_flight, send_upstream_error
from cacheproxy.http.coalesce import Coalescer, flight_refused
from cacheproxy.http.credentials import Credentials
from cacheproxy.http.fastlane import FastResult, HitResponse
from cacheproxy.http.fill import Filler
from cacheproxy.http.forward import Forwarder
from cacheproxy.http.respond import Receive, Scope, Send
from cacheproxy.http.stale import flight_failed, send_stale
from cacheproxy.stats import Stats
from cacheproxy.store.base import Entry, Generations, Lookup, Store, StoreError
from cacheproxy.upstream.base import Transport, UpstreamError

_PLANNED = "cacheproxy.core.plan"
"""Scope key: ``(the result of _plan,)`` as the fast lane computed it, so the
ASGI path does not scan, parse and hash the same request again."""
_PREFETCHED = "cacheproxy.lookup"
"""Scope key: the store's answer the fast lane got for a request that was
not a hit after all, ``(cache key, Lookup or StoreError)``."""
_FAST_STATUSES = frozenset({200})
"""Cached statuses the fast lane answers (only 200s are stored today).  Never
401, 511 or 500: the brute-force guard must see every authentication failure
(:mod:`cacheproxy.guard`) and only the ASGI path shows them to it."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The proxy's tunables (a subset of :class:`cacheproxy.settings.Settings`)."""

    upstream_host: bytes = b"localhost"
    auth_ttl: float = policy.DEFAULT_AUTH_TTL
    max_entry_bytes: int = policy.DEFAULT_MAX_ENTRY_BYTES
    max_body_bytes: int = 16 * 1024 * 1024
    lease_seconds: float = 5.0
    """How long one replica may hold the right to fetch a key."""
    lease_wait: float = 2.0
    """How long other replicas wait for that fetch before fetching themselves."""


class Proxy:
    """Serves GETs from the cache, coalesces misses, forwards everything else."""

    def __init__(
        self,
        *,
        rules: RuleSet,
        store: Store,
        transport: Transport,
        resolver: IdentityResolver,
        config: ProxyConfig | None = None,
        stats: Stats | None = None,
        clock: Callable[[], float] = time.time,
        shared_store: bool = False,
    ) -> None:
        self.planner = Planner(rules, resolver)
        self.store = store
        self.transport = transport
        self.resolver = resolver
        self.config = config or ProxyConfig()
        self.stats = stats or Stats()
        self._clock = clock
        self.coalescer = Coalescer()
        self.credentials = Credentials(
            store=store, stats=self.stats, clock=clock, auth_ttl=self.config.auth_ttl
        )
        self.fill = Filler(
            store=store,
            transport=transport,
            stats=self.stats,
            credentials=self.credentials,
            clock=clock,
            upstream_host=self.config.upstream_host,
            max_entry_bytes=self.config.max_entry_bytes,
            shared=shared_store,
            lease_seconds=self.config.lease_seconds,
            lease_wait=self.config.lease_wait,
        )
        self.forwarder = Forwarder(
            rules=rules,
            store=store,
            transport=transport,
            stats=self.stats,
            resolver=resolver,
            clock=clock,
            upstream_host=self.config.upstream_host,
            max_body_bytes=self.config.max_body_bytes,
        )
        # Bound once: the per-request paths call these with no lookup through
        # their owner (_plan runs for every GET, on the fast lane too).
        self._plan = self.planner.plan
        self._not_cached = self.forwarder.not_cached
        self._forward = self.forwarder.forward
        self._forward_fast = self.forwarder.forward_fast
        self._lookup_now: Callable[[bytes, Sequence[str], bytes], Lookup] | None = getattr(
            store, "lookup_now", None
        )
        """The store's synchronous lookup, when it has one (the in-process
        tier): what lets :meth:`fast_response` answer without awaiting."""

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock every step reads (settable: tests move time)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._clock = self.credentials.clock = self.fill.clock = self.forwarder.clock = clock

    @property
    def rules(self) -> RuleSet:
        return self.planner.rules

    @rules.setter
    def rules(self, rules: RuleSet) -> None:
        self.planner.rules = self.forwarder.rules = rules

    async def aclose(self) -> None:
        await self.coalescer.aclose()
        await self.fill.aclose()

    # -- entry point --------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method != "GET":
            await self._not_cached(scope, receive, send)
            return
        planned = scope.pop(_PLANNED, None)
        plan = self._plan(scope) if planned is None else planned[0]
        if isinstance(plan, Route):
            if plan.cacheable:  # no usable identity: slurmrestd judges the request
                req = from_scope(scope, (plan.segments, plan.query))
                await self._forward(req, plan.match, receive, send, "fwd=request")
            else:
                await self._not_cached(scope, receive, send, plan)
            return
        if plan is None:
            await self._not_cached(scope, receive, send)
            return
        await self._cached_get(scope, plan, send)

    def fast_response(self, scope: Scope) -> FastResult:
        """The response to a GET that is a fresh hit, else None; for a GET no
        rule caches, the fast lane's forward of it (:mod:`cacheproxy.forward`).

        Free of side effects but the hit counters, so the server protocol can
        answer a hit without an ASGI cycle (see :mod:`cacheproxy.fastlane`);
        anything else (a miss, a stale entry, a credential not accepted) is
        left to the ASGI path, which decides it again from scratch.  With a
        store that can be read without waiting the answer is immediate;
        otherwise it is an awaitable of it, for requests that may be hits.
        """
        if scope["method"] != "GET":
            return None
        plan = self._plan(scope)
        scope[_PLANNED] = (plan,)  # whatever the lane decides, the ASGI path reuses it
        if isinstance(plan, Route):
            return None if plan.cacheable else self._forward_fast(scope, plan)
        if plan is None:
            return None
        lookup_now = self._lookup_now
        if lookup_now is None:
            return self._fast_later(scope, plan)
        try:
            found = lookup_now(plan.key, plan.match.tags, plan.identity.credential)
        except StoreError:
            return None
        return self._fast_hit(plan, found)

    async def _fast_later(self, scope: Scope, plan: GetPlan) -> HitResponse | None:
        try:
            found = await self.store.lookup(plan.key, plan.match.tags, plan.identity.credential)
        except StoreError as exc:
            scope[_PREFETCHED] = (plan.key, exc)
            return None
        hit = self._fast_hit(plan, found)
        if hit is None:  # the ASGI path takes it from here, with this answer
            scope[_PREFETCHED] = (plan.key, found)
        return hit

    async def _lookup(self, scope: Scope, plan: GetPlan) -> Lookup:
        """The store's answer for this GET: the one the fast lane already got
        for this very request when it has one (the Redis tier: one round
        trip, not two, for a request that turned out not to be a hit)."""
        prefetched = scope.pop(_PREFETCHED, None)
        if prefetched is not None and prefetched[0] == plan.key:
            answer = prefetched[1]
            if isinstance(answer, StoreError):
                raise answer
            assert isinstance(answer, Lookup)
            return answer
        return await self.store.lookup(plan.key, plan.match.tags, plan.identity.credential)

    def _fast_hit(self, plan: GetPlan, found: Lookup) -> HitResponse | None:
        """The lane's answer: :func:`decide.on_lookup`'s, when it is a fresh
        hit the lane may write (a 200: the guard sees every other status)."""
        match = plan.match
        hit = decide.is_fresh_hit(match, plan.identity.credential, plan.key, found, self._clock())
        if hit is None or hit.entry.status not in _FAST_STATUSES:
            return None
        stats = self.stats
        stats.requests[(match.name, "hit")] += 1
        stats.fast_hits += 1
        return hit_response(hit.entry, hit.now, plan.accept_encoding)

    def user_tag(self, name: str) -> str:
        """The tag every entry cached for user ``name`` carries (admin purge by user)."""
        return self.resolver.user_tag(name)

    # -- the cached GET -----------------------------------------------------
    async def _cached_get(self, scope: Scope, plan: GetPlan, send: Send) -> None:
        """Carries out :func:`decide.on_lookup`'s decision."""
        match, identity, key = plan.match, plan.identity, plan.key
        accept_encoding = plan.accept_encoding
        try:
            found = await self._lookup(scope, plan)
        except StoreError:
            # Nothing can be served or trusted, but identical requests with the
            # same credential still share one fetch.
            self.stats.store_errors += 1  # the store logs once per episode
            found = decide.store_down(self.forwarder.local_writes)
        decision = decide.on_lookup(match, identity.credential, key, found, self._clock())
        if isinstance(decision, decide.FreshHit):
            self.stats.requests[(match.name, "hit")] += 1
            await send_entry(send, decision.entry, decision.now, accept_encoding)
            return
        if isinstance(decision, decide.StaleWhileRevalidate):
            gens = tuple(found.generations)
            if self.coalescer.join(key, gens) is None:
                req = from_scope(scope)
                revalidate = decision.revalidate
                self.coalescer.start(
                    key,
                    gens,
                    identity.credential,
                    lambda f: self.fill.fetch(f, req, match, identity, key, True, revalidate),
                )
            await self._send_stale(send, decision.entry, match, "stale-while-revalidate", plan)
            return
        await self._fetch(scope, plan, decision, found.generations, send)

    async def _fetch(
        self,
        scope: Scope,
        plan: GetPlan,
        fetch: decide.Fetch,
        generations: Generations,
        send: Send,
    ) -> None:
        """Join the key's flight, or start it; then what :func:`decide.after_flight` says."""
        match, identity, key = plan.match, plan.identity, plan.key
        if fetch.forget_credential:
            self.credentials.forget(identity.credential)
        flight = self.coalescer.join(fetch.flight_key, generations)
        if flight is None and fetch.join_also is not None:
            flight = self.coalescer.join(fetch.join_also, generations)
        outcome = "fwd=miss; collapsed"
        if flight is None:
            outcome = "fwd=miss"
            req = from_scope(scope, (plan.route.segments, plan.route.query), plan.view)
            accepted, revalidate = fetch.accepted, fetch.revalidate
            flight = self.coalescer.start(
                fetch.flight_key,
                generations,
                identity.credential,
                lambda f: self.fill.fetch(f, req, match, identity, key, accepted, revalidate),
            )
        else:
            self.stats.coalesced += 1
        try:
            await flight.wait_head()
        except UpstreamError as exc:
            instead = decide.on_flight_error(fetch)
            if isinstance(instead, decide.ServeStale):
                await self._send_stale(send, instead.entry, match, "stale-if-error", plan)
                return
            self.stats.requests[(match.name, "error")] += 1
            await send_upstream_error(send, exc, outcome, self.stats)
            return
        led = flight.credential == identity.credential
        refused = not led and await flight_refused(flight)
        failed = fetch.fallback is not None and not refused and await flight_failed(flight)
        then = decide.after_flight(fetch, led, refused, failed)
        if isinstance(then, decide.ForwardOwn):
            req = from_scope(scope, (plan.route.segments, plan.route.query), plan.view)
            await self._forward(req, match, None, send, "fwd=miss")
        elif isinstance(then, decide.ServeStale):
            await self._send_stale(send, then.entry, match, "stale-if-error", plan)
        else:
            await send_flight(send, flight, match, outcome, self.stats)

    async def _send_stale(
        self, send: Send, entry: Entry, match: Match, reason: str, plan: GetPlan
    ) -> None:
        await send_stale(
            send, entry, match, reason, plan.accept_encoding, self._clock(), self.stats
        )
