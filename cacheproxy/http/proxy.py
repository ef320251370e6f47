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
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from cacheproxy.core import policy
from cacheproxy.core.identity import Identity, IdentityResolver
from cacheproxy.core.plan import GetPlan, Planner, Route
from cacheproxy.core.request import from_scope
from cacheproxy.core.rules import Match, RuleSet
from cacheproxy.http.answer import hit_response, send_entry, send_flight, send_upstream_error
from cacheproxy.http.coalesce import Coalescer, flight_refused
from cacheproxy.http.credentials import Credentials
from cacheproxy.http.fastlane import FastResult, HitResponse
from cacheproxy.http.fill import Filler
from cacheproxy.http.forward import Forwarder
from cacheproxy.http.stale import flight_failed, send_stale
from cacheproxy.stats import Stats
from cacheproxy.store.base import Entry, Lookup, Store, StoreError
from cacheproxy.upstream.base import Transport, UpstreamError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_STORE_DOWN = -1
"""First generation while the store cannot answer (no stored value has it)."""


_PLANNED = "cacheproxy.plan"
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
        match = plan.match
        now = self._clock()
        entry = found.entry
        if (
            entry is None
            or found.accepted_until <= now
            or entry.status not in _FAST_STATUSES
            or not entry.is_fresh(now)
            or not entry.is_valid(match.tags, found.generations)
        ):
            return None
        stats = self.stats
        stats.requests[(match.name, "hit")] += 1
        stats.fast_hits += 1
        return hit_response(entry, now, plan.accept_encoding)

    def user_tag(self, name: str) -> str:
        """The tag every entry cached for user ``name`` carries (admin purge by user)."""
        return self.resolver.user_tag(name)

    # -- the cached GET -----------------------------------------------------
    async def _cached_get(self, scope: Scope, plan: GetPlan, send: Send) -> None:
        match, identity, key = plan.match, plan.identity, plan.key
        accept_encoding = plan.accept_encoding
        try:
            found = await self._lookup(scope, plan)
        except StoreError:
            # Nothing can be served or trusted, but identical requests with the
            # same credential still share one fetch.  Local writes move the
            # generations, so read-your-writes holds through this process.
            self.stats.store_errors += 1  # the store logs once per episode
            found = Lookup(None, (_STORE_DOWN, self.forwarder.local_writes), 0.0)
        now = self._clock()
        accepted = found.accepted_until > now
        if not accepted:
            # Whatever this process recorded is gone (revoked elsewhere, or a
            # restarted Redis): record the next acceptance again.
            self.credentials.forget(identity.credential)
        entry = found.entry
        if (
            entry is not None
            and accepted
            and entry.is_fresh(now)
            and entry.is_valid(match.tags, found.generations)
        ):
            self.stats.requests[(match.name, "hit")] += 1
            await send_entry(send, entry, now, accept_encoding)
            return
        stale = None
        if (
            entry is not None
            and accepted
            and match.rule is not None
            and match.rule.revalidate is not None
            and entry.is_valid(match.tags, found.generations)
        ):
            stale = entry  # expired, but no write touched it: revalidate
        fallback = policy.stale_fallback(entry, accepted, match, found.generations, now)
        if fallback is not None and await self._stale_while_revalidate(
            scope, send, fallback, match, identity, key, found.generations, stale, accept_encoding
        ):
            return
        # Unaccepted credentials coalesce only with the very same credential:
        # slurmrestd must judge them before anything is shared.
        flight_key = key if accepted else key + identity.credential
        flight = self.coalescer.join(flight_key, found.generations)
        if flight is None and accepted:
            # The fetch that got this very credential accepted may still run
            # under its unaccepted key: join it rather than fetch again.
            flight = self.coalescer.join(key + identity.credential, found.generations)
        outcome = "fwd=miss; collapsed"
        if flight is None:
            outcome = "fwd=miss"
            req = from_scope(scope, (plan.route.segments, plan.route.query), plan.view)
            flight = self.coalescer.start(
                flight_key,
                found.generations,
                identity.credential,
                lambda f: self.fill.fetch(f, req, match, identity, key, accepted, stale),
            )
        else:
            self.stats.coalesced += 1
        try:
            await flight.wait_head()
        except UpstreamError as exc:
            if fallback is not None:
                await send_stale(
                    send,
                    fallback,
                    match,
                    "stale-if-error",
                    accept_encoding,
                    self._clock(),
                    self.stats,
                )
                return
            self.stats.requests[(match.name, "error")] += 1
            await send_upstream_error(send, exc, outcome, self.stats)
            return
        if flight.credential != identity.credential and await flight_refused(flight):
            # The leader's credential was refused; ours may not be.
            req = from_scope(scope, (plan.route.segments, plan.route.query), plan.view)
            await self._forward(req, match, None, send, "fwd=miss")
            return
        if fallback is not None and await flight_failed(flight):
            await send_stale(
                send, fallback, match, "stale-if-error", accept_encoding, self._clock(), self.stats
            )
            return
        await send_flight(send, flight, match, outcome, self.stats)

    # -- stale serving (docs/hardening.md) ------------------------------------
    async def _stale_while_revalidate(
        self,
        scope: Scope,
        send: Send,
        entry: Entry,
        match: Match,
        identity: Identity,
        key: bytes,
        generations: Sequence[int],
        revalidate: Entry | None,
        accept_encoding: bytes,
    ) -> bool:
        """Within ``stale_while_revalidate``: answer with ``entry`` now and
        refresh it in the background (one flight per key).  False when the
        window is over (the caller fetches as usual)."""
        rule = match.rule
        assert rule is not None
        if self._clock() >= entry.stored_at + entry.ttl + rule.stale_while_revalidate:
            return False
        gens = tuple(generations)
        if self.coalescer.join(key, gens) is None:
            req = from_scope(scope)
            self.coalescer.start(
                key,
                gens,
                identity.credential,
                lambda f: self.fill.fetch(f, req, match, identity, key, True, revalidate),
            )
        await send_stale(
            send, entry, match, "stale-while-revalidate", accept_encoding, self._clock(), self.stats
        )
        return True
