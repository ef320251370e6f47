"""The proxied path: the pipeline's handler for everything slurmrestd serves.

request -> identity -> rule -> key -> store -> decision -> coalescing -> upstream -> response

Where each step lives:

* ``core/plan.py``: request -> identity -> rule -> key, from one scan of the
  headers (routes and keys memoised);
* ``proxy.py`` (here): the lookup, and the execution of what
  ``core/decide.py`` decides (hit, stale, fetch or join a flight);
* ``fill.py``: upstream, for a miss: one fetch feeds the flight and the
  store (revalidated with ``update_time``; one replica at a time per key);
* ``credentials.py``: the credential's verdict, recorded in the store;
* ``forward.py``: everything the cache does not serve, writes' invalidation;
* ``stale.py``: an expired entry standing in for upstream;
* ``answer.py``: the response, marked in ``Cache-Status``.

A fresh hit is answered whole (:meth:`Proxy.respond` returns it); with a store
read without awaiting, the pipeline completes at once and the server protocol
writes it (:mod:`cacheproxy.http.pipeline`).  Raw rather than a framework
route: a framework's routing, request and response objects cost about three
quarters of the hit path's throughput.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cacheproxy.core import decide, policy, splice
from cacheproxy.core.audit import DEFAULT_RATE, DEFAULT_WINDOW
from cacheproxy.core.identity import BEARER, IdentityResolver, jwt_claims
from cacheproxy.core.memo import ByteMemo
from cacheproxy.core.plan import GetPlan, Planner, Route
from cacheproxy.core.request import LEGACY_VERSIONS, from_scope
from cacheproxy.core.rules import Match, RuleSet
from cacheproxy.http.answer import hit_response, send_flight, send_upstream_error
from cacheproxy.http.audit import Auditor
from cacheproxy.http.coalesce import Coalescer, flight_refused
from cacheproxy.http.credentials import Credentials
from cacheproxy.http.fill import Filler
from cacheproxy.http.forward import Forwarder
from cacheproxy.http.jwtcheck import TokenVerifier
from cacheproxy.http.pipeline import Answer, Continue, Exchange, Outcome
from cacheproxy.http.prove import Prover
from cacheproxy.http.respond import Receive, Scope, Send, send_response
from cacheproxy.http.sitescope import SiteScopes
from cacheproxy.http.stale import flight_failed, send_stale
from cacheproxy.settings import Settings
from cacheproxy.stats import Stats
from cacheproxy.store.base import Entry, Generations, Lookup, Store, StoreError
from cacheproxy.upstream.base import Transport, UpstreamError

if TYPE_CHECKING:
    from cacheproxy.store.demotions import DemotionBoard

VERIFIED_MAX_BYTES = 4 * 1024 * 1024
"""Bound of the memo of credentials the local JWT check verified."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The proxy's tunables (a subset of :class:`cacheproxy.settings.Settings`)."""

    upstream_host: bytes = b"localhost"
    auth_ttl: float = policy.DEFAULT_AUTH_TTL
    max_entry_bytes: int = policy.DEFAULT_MAX_ENTRY_BYTES
    max_body_bytes: int = 16 * 1024 * 1024
    max_url_bytes: int = Settings.model_fields["max_url_bytes"].default
    """The longest request target (the listener refuses longer ones first)."""
    lease_seconds: float = 5.0
    """How long one replica may hold the right to fetch a key."""
    lease_wait: float = 2.0
    """How long other replicas wait for that fetch before fetching themselves."""
    audit_rate: float = DEFAULT_RATE
    """Fraction of a shared route's fills audited (0: no audit)."""
    audit_window: float = DEFAULT_WINDOW
    """Seconds after a fill within which a second user's fetch pairs with it."""


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
        scopes: SiteScopes | None = None,
        verifier: TokenVerifier | None = None,
        demotions: DemotionBoard | None = None,
    ) -> None:
        self.scopes = scopes or SiteScopes(rules.rules)
        """Each route's scope (every route per user unless the site's
        ``PrivateData`` is configured)."""
        self.config = config or ProxyConfig()
        self.planner = Planner(
            rules, resolver, max_url_bytes=self.config.max_url_bytes, shared=self.scopes.shared
        )
        self.verifier = verifier
        """The local JWT check, when configured: a credential it verifies may
        read shared entries without slurmrestd's acceptance."""
        self._verified: ByteMemo[bytes, float] = ByteMemo(VERIFIED_MAX_BYTES)
        self._proving: dict[bytes, asyncio.Event] = {}
        """credential hash -> the fetch of a shared route that is proving it
        to slurmrestd (the credential's first miss): its other requests
        wait for that verdict instead of each asking slurmrestd."""
        self.store = store
        self.transport = transport
        self.resolver = resolver
        self.stats = stats or Stats()
        self._clock = clock
        self._shared_hits = self.stats.shared_hits  # (bound once: counted on every shared hit)
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
            credentials=self.credentials,
            clock=clock,
            upstream_host=self.config.upstream_host,
            max_body_bytes=self.config.max_body_bytes,
            max_url_bytes=self.config.max_url_bytes,
        )
        self.audit = Auditor(
            transport=transport,
            stats=self.stats,
            scopes=self.scopes,
            clock=clock,
            upstream_host=self.config.upstream_host,
            max_body_bytes=self.config.max_entry_bytes,
            rate=self.config.audit_rate,
            window=self.config.audit_window,
            board=demotions,
        )
        """The audit of shared views (a safety net for a wrong ``PrivateData``)."""
        self.fill.on_shared_fill = self.audit.filled
        self.prover = Prover(
            transport=transport,
            credentials=self.credentials,
            stats=self.stats,
            clock=clock,
            upstream_host=self.config.upstream_host,
        )
        """Proves a new credential with a cheap question when a fresh shared
        entry waits for it (:mod:`cacheproxy.http.prove`)."""
        # Bound once: the per-request paths call these with no lookup through
        # their owner (_plan runs for every GET).
        self._plan = self.planner.plan
        self._not_cached = self.forwarder.not_cached
        self._forward = self.forwarder.forward
        self._lookup_now: Callable[[bytes, Sequence[str], bytes], Lookup] | None = getattr(
            store, "lookup_now", None
        )
        """The store's synchronous lookup, when it has one (the in-process
        tier): what lets :meth:`respond` answer a hit without awaiting."""

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock every step reads (settable: tests move time)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._clock = self.credentials.clock = self.fill.clock = self.forwarder.clock = clock
        self.audit.clock = self.prover.clock = clock

    @property
    def rules(self) -> RuleSet:
        return self.planner.rules

    @rules.setter
    def rules(self, rules: RuleSet) -> None:
        self.planner.rules = self.forwarder.rules = rules

    async def aclose(self) -> None:
        await self.audit.aclose()
        await self.coalescer.aclose()
        await self.fill.aclose()

    # -- entry point --------------------------------------------------------
    def respond(self, ex: Exchange) -> Outcome:
        """The answer to a proxied request (see :mod:`cacheproxy.http.pipeline`):
        a fresh hit whole, at once when the store can be read without
        awaiting; otherwise what must be awaited or streamed.  (No closure
        here: the hit path pays for none; :meth:`_then` makes them.)"""
        scope = ex.scope
        if scope["method"] != "GET":
            return self._not_cached_then(ex)
        plan = self._plan(scope, ex.view)
        if isinstance(plan, Route):
            ex.rule = plan.match.name
            if plan.cacheable:  # no usable identity: slurmrestd judges the request
                return self._then(self._forward_request, scope, plan)
            return self.forwarder.uncached_get(ex, plan)
        if plan is None:
            return self._not_cached_then(ex)
        ex.rule = plan.match.name
        lookup_now = self._lookup_now
        if lookup_now is None:
            return self._respond_later(ex, plan)
        try:
            found = lookup_now(plan.key, plan.match.tags, plan.identity.credential)
        except StoreError:
            return self._decided(ex, plan, None)
        return self._decided(ex, plan, found)

    async def _respond_later(self, ex: Exchange, plan: GetPlan) -> Answer:
        try:
            found = await self.store.lookup(plan.key, plan.match.tags, plan.identity.credential)
        except StoreError:
            return self._decided(ex, plan, None)
        return self._decided(ex, plan, found)

    def _decided(
        self, ex: Exchange, plan: GetPlan, found: Lookup | None, wait_proof: bool = True
    ) -> Answer:
        """Carries out :func:`decide.on_lookup`'s decision (``found`` None: the
        store could not answer)."""
        if found is None:
            # Nothing can be served or trusted, but identical requests with the
            # same credential still share one fetch.
            self.stats.store_errors += 1  # the store logs once per episode
            found = decide.store_down(self.forwarder.local_writes)
        match = plan.match
        now = self._clock()
        if plan.shared and found.accepted_until <= now and self.verifier is not None:
            until = self._verified_until(plan)
            if until > now:
                found = Lookup(found.entry, found.generations, until)
        decision = decide.on_lookup(match, plan.identity.credential, plan.key, found, now)
        if isinstance(decision, decide.FreshHit):
            self.stats.requests[(match.name, "hit")] += 1
            ex.lane = ex.outcome = "hit"
            source = None
            if plan.shared:
                self._shared_hits[match.name] += 1
                source = splice.source_value(ex.scope.get("client"))
                if now >= self.audit.wake_at:
                    self.audit.on_shared(plan, ex.scope, now)
            return hit_response(decision.entry, decision.now, plan.accept_encoding, source)
        generations = tuple(found.generations)
        if isinstance(decision, decide.StaleWhileRevalidate):
            return self._then(self._stale_while_revalidate, ex.scope, plan, decision, generations)
        proof = None
        if plan.shared and not decision.accepted and wait_proof:
            if not decision.refresh:  # a fresh shared entry is there, not for this credential
                self.stats.shared_withheld[match.name] += 1
            credential = plan.identity.credential
            proving = self._proving.get(credential)
            if proving is not None:
                return self._then(self._after_proof, ex, plan, proving)
            self.stats.shared_proofs[match.name] += 1
            proof = self._proving[credential] = asyncio.Event()
            if not decision.refresh and self.prover.applies(plan):
                # A fresh entry waits: the cheap question proves the credential.
                return self._then(self._prove, ex, plan, proof)
        return self._then(self._fetch, ex.scope, plan, decision, generations, proof)

    async def _prove(
        self, ex: Exchange, plan: GetPlan, proof: asyncio.Event, receive: Receive, send: Send
    ) -> None:
        """Prove the credential (:mod:`cacheproxy.http.prove`), then decide
        again, as the credential's other waiting requests do."""
        try:
            await self.prover.prove(ex.scope, plan)
        finally:
            self._proved(plan.identity.credential, proof)
        await self._after_proof(ex, plan, proof, receive, send)

    async def _after_proof(
        self, ex: Exchange, plan: GetPlan, proving: asyncio.Event, receive: Receive, send: Send
    ) -> None:
        """Another request with this credential is asking slurmrestd, which
        will accept or refuse it: wait for that verdict, then decide again (a
        shared hit once accepted; upstream as this user otherwise).  A
        credential's first miss is its proof: no other call.  (A flight
        always ends, within the upstream's timeouts.)"""
        await proving.wait()
        try:
            found: Lookup | None = await self.store.lookup(
                plan.key, plan.match.tags, plan.identity.credential
            )
        except StoreError:
            found = None
        answer = self._decided(ex, plan, found, wait_proof=False)
        if isinstance(answer, Continue):
            await answer.run(receive, send)
        else:
            await send_response(send, answer)

    def _verified_until(self, plan: GetPlan) -> float:
        """Until when the local JWT check vouches for this credential (0.0:
        it does not).  Never past the token's ``exp``; only for a request
        every release accepts alike: the name header, when sent, names the
        token's owner (else only a root or SlurmUser token is accepted), and
        22.05's paths need the name and ignore ``Authorization``."""
        identity = plan.identity
        until = self._verified.get(identity.credential)
        if until is not None:
            return until
        assert self.verifier is not None
        view = plan.view
        legacy = len(plan.route.segments) > 1 and plan.route.segments[1] in LEGACY_VERSIONS
        token = view.token if identity.kind == "token" else (view.auth or b"")[len(BEARER) :]
        until = 0.0
        if token and not (legacy and (view.name is None or identity.kind != "token")):
            exp = self.verifier.expiry(token)
            claims = jwt_claims(token) or {}
            owner = claims.get("sun", claims.get("username"))
            name_ok = view.name is None or view.name.decode("latin-1") == owner
            if exp is not None and name_ok:
                until = exp
        self._verified.put(identity.credential, until, len(identity.credential) + 32)
        return until

    def _not_cached_then(self, ex: Exchange) -> Continue:
        """Forwarded as is (the forwarder names the rule in ``ex``)."""
        not_cached, scope = self._not_cached, ex.scope
        return Continue(lambda receive, send: not_cached(scope, receive, send, None, ex))

    @staticmethod
    def _then(step: Callable[..., Awaitable[None]], *args: Any) -> Continue:
        """``step(*args, receive, send)``, in the ASGI cycle."""
        return Continue(lambda receive, send: step(*args, receive, send))

    async def _forward_request(
        self, scope: Scope, route: Route, receive: Receive, send: Send
    ) -> None:
        req = from_scope(scope, (route.segments, route.query))
        await self._forward(req, route.match, receive, send, "fwd=request")

    def user_tag(self, name: str) -> str:
        """The tag every entry cached for user ``name`` carries (admin purge by user)."""
        return self.resolver.user_tag(name)

    # -- the cached GET, not a fresh hit ----------------------------------------
    async def _stale_while_revalidate(
        self,
        scope: Scope,
        plan: GetPlan,
        swr: decide.StaleWhileRevalidate,
        generations: Generations,
        receive: Receive,
        send: Send,
    ) -> None:
        """Answer with the stale entry now; refresh it behind (one flight per key)."""
        match, identity, key = plan.match, plan.identity, plan.key
        if self.coalescer.join(key, generations) is None:
            req = from_scope(scope, (plan.route.segments, plan.route.query), plan.view)
            revalidate = swr.revalidate
            self.coalescer.start(
                key,
                generations,
                identity.credential,
                lambda f: self.fill.fetch(
                    f, req, match, identity, key, True, revalidate, shared=plan.shared
                ),
            )
        await self._send_stale(send, swr.entry, match, "stale-while-revalidate", plan, scope)

    async def _fetch(
        self,
        scope: Scope,
        plan: GetPlan,
        fetch: decide.Fetch,
        generations: Generations,
        proof: asyncio.Event | None,
        receive: Receive,
        send: Send,
    ) -> None:
        """Join the key's flight, or start it; then what :func:`decide.after_flight`
        says.  ``proof``: this request proves its credential to slurmrestd
        (its first miss on a shared route): set once the flight is done."""
        try:
            await self._fetch_flight(scope, plan, fetch, generations, proof, send)
        finally:
            if proof is not None and not proof.is_set():
                self._proved(plan.identity.credential, proof)

    async def _fetch_flight(
        self,
        scope: Scope,
        plan: GetPlan,
        fetch: decide.Fetch,
        generations: Generations,
        proof: asyncio.Event | None,
        send: Send,
    ) -> None:
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
            accepted, revalidate, refresh = fetch.accepted, fetch.revalidate, fetch.refresh
            flight = self.coalescer.start(
                fetch.flight_key,
                generations,
                identity.credential,
                lambda f: self.fill.fetch(
                    f,
                    req,
                    match,
                    identity,
                    key,
                    accepted,
                    revalidate,
                    shared=plan.shared,
                    refresh=refresh,
                ),
            )
        else:
            self.stats.coalesced += 1
        if proof is not None:
            flight.on_done(lambda: self._proved(identity.credential, proof))
        try:
            await flight.wait_head()
        except UpstreamError as exc:
            instead = decide.on_flight_error(fetch)
            if isinstance(instead, decide.ServeStale):
                await self._send_stale(send, instead.entry, match, "stale-if-error", plan, scope)
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
            await self._send_stale(send, then.entry, match, "stale-if-error", plan, scope)
        else:
            source = None
            if plan.shared and not led:
                source = splice.source_value(scope.get("client"))
            await send_flight(send, flight, match, outcome, self.stats, source)
            if plan.shared and fetch.accepted and not led:
                now = self._clock()  # (a follower: the fill it waited for may be armed)
                if now >= self.audit.wake_at:
                    self.audit.on_shared(plan, scope, now)

    def _proved(self, credential: bytes, proof: asyncio.Event) -> None:
        """The credential's proof is in (accepted, refused, or failed)."""
        proof.set()
        if self._proving.get(credential) is proof:
            del self._proving[credential]

    async def _send_stale(
        self, send: Send, entry: Entry, match: Match, reason: str, plan: GetPlan, scope: Scope
    ) -> None:
        source = splice.source_value(scope.get("client")) if plan.shared else None
        await send_stale(
            send, entry, match, reason, plan.accept_encoding, self._clock(), self.stats, source
        )
