"""The proxied path, as a raw ASGI app.

request -> identity -> rule -> key -> store -> coalescing -> upstream -> response

Raw ASGI rather than a framework route: a framework's routing, request and
response objects cost about three quarters of the hit path's throughput.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any

from cacheproxy import compress, headers, policy
from cacheproxy.answer import (
    hit_response,
    send_entry,
    send_flight,
    send_upstream_error,
)
from cacheproxy.coalesce import Coalescer, Flight
from cacheproxy.fastlane import FastResult, HitResponse
from cacheproxy.forward import Forwarder, upstream_headers
from cacheproxy.identity import Identity, IdentityResolver
from cacheproxy.plan import GetPlan, Planner, Route
from cacheproxy.request import ProxyRequest, from_scope
from cacheproxy.rules import Match, RuleSet
from cacheproxy.stale import flight_failed, send_stale
from cacheproxy.stats import Stats
from cacheproxy.store.base import Entry, Lookup, Store, StoreError
from cacheproxy.upstream.base import (
    Headers,
    Transport,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
)

log = logging.getLogger("cacheproxy.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPDATE_TIME_MARGIN = 2
"""Seconds subtracted from the cached copy's time when revalidating: covers
clock skew with slurmctld (an earlier update_time only costs a full list)."""
_NO_CHANGE_MAX = 64 * 1024
"""A 25.x "No job changes" answer is small; larger 200s are full lists."""
_COMPRESS_INLINE_BELOW = 64 * 1024
_MEMO_MAX = 16_384
_STORE_DOWN = -1
"""First generation while the store cannot answer (no stored value has it)."""
_AUTHORITATIVE_FAMILIES = frozenset({"slurm", "slurmdb"})
"""Answers under these asked slurmctld or slurmdbd, which checked the token."""


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
        self.clock = clock
        self.coalescer = Coalescer()
        self._shared = shared_store
        self.forwarder = Forwarder(
            rules=rules,
            store=store,
            transport=transport,
            stats=self.stats,
            upstream_host=self.config.upstream_host,
            max_body_bytes=self.config.max_body_bytes,
        )
        self._background: set[asyncio.Task[None]] = set()
        self._recorded: dict[bytes, float] = {}
        """credential hash -> acceptance this process recorded, until when."""
        # Bound once: the per-request paths call these with no lookup through
        # their owner (_plan runs for every GET, on the fast lane too).
        self._plan = self.planner.plan
        self._not_cached = self.forwarder.not_cached
        self._forward = self.forwarder.forward
        self._lookup_now: Callable[[bytes, Sequence[str], bytes], Lookup] | None = getattr(
            store, "lookup_now", None
        )
        """The store's synchronous lookup, when it has one (the in-process
        tier): what lets :meth:`fast_response` answer without awaiting."""

    @property
    def rules(self) -> RuleSet:
        return self.planner.rules

    @rules.setter
    def rules(self, rules: RuleSet) -> None:
        self.planner.rules = self.forwarder.rules = rules

    async def aclose(self) -> None:
        await self.coalescer.aclose()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

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
        """The response to a GET that is a fresh hit, else None.

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
        if plan is None or isinstance(plan, Route) or plan.has_body:
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
        now = self.clock()
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
            self._store_fault()
            found = Lookup(None, (_STORE_DOWN, self.forwarder.local_writes), 0.0)
        now = self.clock()
        accepted = found.accepted_until > now
        if not accepted:
            # Whatever this process recorded is gone (revoked elsewhere, or a
            # restarted Redis): record the next acceptance again.
            self._recorded.pop(identity.credential, None)
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
            req = from_scope(scope, (plan.route.segments, plan.route.query))
            flight = self.coalescer.start(
                flight_key,
                found.generations,
                identity.credential,
                lambda f: self._fetch(f, req, match, identity, key, accepted, stale),
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
                    self.clock(),
                    self.stats,
                )
                return
            self.stats.requests[(match.name, "error")] += 1
            await send_upstream_error(send, exc, outcome, self.stats)
            return
        if flight.credential != identity.credential and policy.credential_refused(
            flight.status, b""
        ):
            # The leader's credential was refused; ours may not be.
            req = from_scope(scope, (plan.route.segments, plan.route.query))
            await self._forward(req, match, None, send, "fwd=miss")
            return
        if fallback is not None and await flight_failed(flight):
            await send_stale(
                send, fallback, match, "stale-if-error", accept_encoding, self.clock(), self.stats
            )
            return
        await send_flight(send, flight, match, outcome, self.stats)

    async def _fetch(
        self,
        flight: Flight,
        req: ProxyRequest,
        match: Match,
        identity: Identity,
        key: bytes,
        accepted: bool,
        stale: Entry | None = None,
    ) -> None:
        """The body of a flight: fetch once, share with every consumer, store.

        ``stale`` is an expired but still valid entry of a rule that
        revalidates with ``update_time``: slurmctld then only says whether the
        list changed, instead of building and sending it again.
        """
        lease = False
        if self._shared and accepted:
            lease = await self._acquire_lease(key)
            if not lease and await self._wait_for_peer(flight, match, identity, key):
                return
        try:
            if stale is None or not await self._revalidate(flight, req, match, key, stale):
                await self._fetch_upstream(flight, req, match, identity, key)
        finally:
            if lease:
                try:
                    await self.store.release_lease(key)
                except StoreError:
                    self._store_fault()

    async def _revalidate(
        self, flight: Flight, req: ProxyRequest, match: Match, key: bytes, stale: Entry
    ) -> bool:
        """Ask slurmrestd whether ``stale`` is still current.

        True when the flight was completed (renewed, or replaced by the full
        list slurmrestd sent instead); False when the answer was neither
        (e.g. an error some versions give for ``update_time``): the caller
        then fetches the plain resource, so the client never sees an answer
        to a question it did not ask.
        """
        since = int(stale.origin or stale.stored_at) - UPDATE_TIME_MARGIN
        sep = "&" if "?" in req.raw_target else "?"
        up = UpstreamRequest(
            method="GET",
            target=f"{req.raw_target}{sep}update_time={since}",
            headers=upstream_headers(req, self.config.upstream_host, None),
            retry_on_stale_connection=True,
        )
        self.stats.upstream_requests[match.name] += 1
        sent_at = self.clock()
        started = time.monotonic()
        resp = await self.transport.send(up)
        self.stats.observe_upstream(match.name, time.monotonic() - started)
        try:
            status = resp.status
            resp_headers = headers.response_headers(resp.headers)
            length = policy.header_value(resp_headers, b"content-length")
            small = length is not None and length.isdigit() and int(length) <= _NO_CHANGE_MAX
            if status == 304 or (status == 200 and small):
                body = b"".join([c async for c in resp.aiter_body()])
            elif status == 200:
                # A full list: share and store it as any fetch would.
                await self._fill_flight(flight, resp, resp_headers, match, key, sent_at)
                return True
            else:
                return False
        finally:
            await resp.aclose()
        if status == 304 or policy.no_changes(body):
            renewed = dataclasses.replace(
                stale, stored_at=self.clock(), origin=sent_at, generations=flight.generations
            )
            await self._put(flight, key, renewed)
            flight.revalidated = True
            flight.set_head(renewed.status, renewed.headers)
            flight.push(renewed.body)
            flight.finish()
            return True
        # A small full list: complete the flight with it.
        flight.set_head(status, resp_headers)
        flight.push(body)
        await self._complete(flight, status, resp_headers, body, match, key, sent_at)
        return True

    async def _fetch_upstream(
        self, flight: Flight, req: ProxyRequest, match: Match, identity: Identity, key: bytes
    ) -> None:
        up = UpstreamRequest(
            method=req.method,
            target=req.raw_target,
            headers=upstream_headers(req, self.config.upstream_host, None),
            retry_on_stale_connection=True,
        )
        self.stats.upstream_requests[match.name] += 1
        sent_at = self.clock()
        started = time.monotonic()
        resp = await self.transport.send(up)
        self.stats.observe_upstream(match.name, time.monotonic() - started)
        try:
            resp_headers = headers.response_headers(resp.headers)
            await self._fill_flight(flight, resp, resp_headers, match, key, sent_at, identity)
        finally:
            await resp.aclose()

    async def _fill_flight(
        self,
        flight: Flight,
        resp: UpstreamResponse,
        resp_headers: Headers,
        match: Match,
        key: bytes,
        sent_at: float,
        identity: Identity | None = None,
    ) -> None:
        """Stream ``resp`` to the flight's consumers, judge ``identity``'s
        credential by the answer, and store it if it may be."""
        limit = self.config.max_entry_bytes
        status = resp.status
        flight.set_head(status, resp_headers)
        length = policy.header_value(resp_headers, b"content-length")
        if status != 200 or (length is not None and length.isdigit() and int(length) > limit):
            flight.stop_sharing()
        size = 0
        head = b""
        async for chunk in resp.aiter_body():
            if len(head) < 4096:
                head += chunk[: 4096 - len(head)]
            size += len(chunk)
            flight.push(chunk)
            if flight.shareable and size > limit:
                flight.stop_sharing()
        body = flight.body() if flight.shareable else b""
        if identity is not None:
            await self._judge_credential(
                identity, match, status, body if flight.shareable else None, head, resp_headers
            )
        await self._complete(flight, status, resp_headers, body, match, key, sent_at)

    async def _complete(
        self,
        flight: Flight,
        status: int,
        resp_headers: Headers,
        body: bytes,
        match: Match,
        key: bytes,
        sent_at: float,
    ) -> None:
        """Store the flight's response if policy allows, then end the flight."""
        limit = self.config.max_entry_bytes
        if flight.shareable and policy.response_storable(status, resp_headers, body, limit):
            variants: tuple[tuple[bytes, bytes], ...] = ()
            compressible = compress.compressible(policy.header_value(resp_headers, b"content-type"))
            later = compressible and len(body) >= _COMPRESS_INLINE_BELOW
            if compressible and not later:
                variants = _variants(body)
            entry = Entry(
                status=status,
                headers=_with_length(resp_headers, len(body)),
                body=body,
                stored_at=self.clock(),
                ttl=match.ttl,
                tags=match.tags,
                generations=flight.generations,
                stale_for=policy.keep_after_expiry(match),
                variants=variants,
                origin=sent_at,
            )
            await self._put(flight, key, entry)
            if later and flight.stored:
                # Large bodies are compressed off the response path (tens of
                # ms of CPU for a big list): the entry is stored plain now and
                # replaced by its compressed form unless a write came between.
                self._spawn(self._store_compressed(key, entry))
        flight.finish()

    async def _store_compressed(self, key: bytes, entry: Entry) -> None:
        variants = await asyncio.to_thread(_variants, entry.body)
        if variants:
            try:
                await self.store.put(key, dataclasses.replace(entry, variants=variants))
            except StoreError:
                self._store_fault()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends
        (the loop holds only weak ones)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _put(self, flight: Flight, key: bytes, entry: Entry) -> None:
        try:
            await self.store.put(key, entry)
            flight.stored = True
        except StoreError:
            self._store_fault()

    async def _acquire_lease(self, key: bytes) -> bool:
        try:
            return await self.store.acquire_lease(key, self.config.lease_seconds)
        except StoreError:
            self._store_fault()
            return True

    async def _wait_for_peer(
        self, flight: Flight, match: Match, identity: Identity, key: bytes
    ) -> bool:
        """Another replica is fetching ``key``: wait (bounded) for its entry.

        True when the flight was completed from the peer's entry.
        """
        deadline = time.monotonic() + self.config.lease_wait
        delay = 0.005
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            try:
                found = await self.store.lookup(key, match.tags, identity.credential)
            except StoreError:
                self._store_fault()
                return False
            entry = found.entry
            if (
                entry is not None
                and entry.is_fresh(self.clock())
                and entry.is_valid(match.tags, found.generations)
                and entry.generations == flight.generations
            ):
                flight.from_peer = True
                flight.stored = True
                flight.set_head(entry.status, entry.headers)
                flight.push(entry.body)
                flight.finish()
                return True
        return False

    async def _judge_credential(
        self,
        identity: Identity,
        match: Match,
        status: int,
        body: bytes | None,
        head: bytes,
        resp_headers: Headers,
    ) -> None:
        """Trust a credential slurmrestd accepted; forget one it refused.

        Called before the flight ends, so the next request already knows.
        Only answers that asked slurmctld or slurmdbd count (never the OpenAPI
        documents, which 22.05 serves to any token).
        """
        try:
            if match.family in _AUTHORITATIVE_FAMILIES and policy.credential_accepted(
                status, body, policy.header_value(resp_headers, b"content-type")
            ):
                now = self.clock()
                until = policy.accepted_until(identity, now, self.config.auth_ttl)
                recorded = self._recorded.get(identity.credential, 0.0)
                if until > now and recorded - now < self.config.auth_ttl / 2:
                    # (re)recorded only when the record is half spent: saves
                    # a store round trip on most misses
                    await self.store.accept(identity.credential, until)
                    if len(self._recorded) >= _MEMO_MAX:
                        self._recorded.clear()
                    self._recorded[identity.credential] = until
                    self.stats.auth_accepted += 1
            elif policy.credential_refused(status, body if body is not None else head):
                self._recorded.pop(identity.credential, None)
                self.stats.auth_refused += 1
                await self.store.revoke(identity.credential)
        except StoreError:
            self._store_fault()

    def _store_fault(self) -> None:
        # Counted here; the store itself logs once per episode.
        self.stats.store_errors += 1

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
        if self.clock() >= entry.stored_at + entry.ttl + rule.stale_while_revalidate:
            return False
        gens = tuple(generations)
        if self.coalescer.join(key, gens) is None:
            req = from_scope(scope)
            self.coalescer.start(
                key,
                gens,
                identity.credential,
                lambda f: self._fetch(f, req, match, identity, key, True, revalidate),
            )
        await send_stale(
            send, entry, match, "stale-while-revalidate", accept_encoding, self.clock(), self.stats
        )
        return True


def _variants(body: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """Compressed copies of ``body``; none if compression fails (it is an
    optimisation, never the reason a request fails)."""
    try:
        return compress.make_variants(body)
    except Exception:
        log.exception("compressing an entry failed; keeping it uncompressed")
        return ()


def _with_length(resp_headers: Headers, length: int) -> Headers:
    out = [(k, v) for k, v in resp_headers if k != b"content-length"]
    out.append((b"content-length", b"%d" % length))
    return out
