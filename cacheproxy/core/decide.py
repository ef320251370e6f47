"""What to do with a request, and with upstream's answer: the cache's state
machine, without I/O (in the manner of hishel's ``_core/_spec.py``).

Each function takes what the mechanism found (the plan, the store's lookup,
the time, upstream's answer) and returns one frozen decision; the mechanism
(:mod:`cacheproxy.http`) carries it out.  So every decision is written once:
a fresh hit answered without awaiting and every other state come from the
same :func:`on_lookup`, and each state has its own tests
(``tests/core/decide/``), with the clock passed in.

For a GET with a usable identity::

    on_lookup -> FreshHit                  serve the entry
              -> StaleWhileRevalidate      serve it stale, refresh it behind
              -> Fetch                     join or start the key's flight
                                           (revalidating a kept copy, or not)
    after_flight -> SendFlight | ForwardOwn | ServeStale | UpstreamFailed

And for upstream's answer: :func:`to_store` (whether and how it is stored),
:func:`credential_verdict` (what it says of the credential),
:func:`invalidates` (what a write's answer invalidates).
"""

from __future__ import annotations

from dataclasses import dataclass

from cacheproxy.core import compress, policy, splice
from cacheproxy.core.identity import Identity
from cacheproxy.core.rules import Match
from cacheproxy.store.base import Entry, Generations, Lookup
from cacheproxy.upstream.base import Headers

STORE_DOWN = -1
"""First generation while the store cannot answer (no stored value has it)."""

COMPRESS_INLINE_BELOW = 64 * 1024
"""Compressible bodies up to this size are compressed before they are
stored; larger ones are stored plain and compressed off the response path."""

REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})
"""CONNECT makes no sense to slurmrestd and TRACE reflects credentials."""


# -- the lookup ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FreshHit:
    """A fresh entry, valid under the current generations, for a credential
    slurmrestd accepted: serve it."""

    entry: Entry
    now: float


@dataclass(frozen=True, slots=True)
class StaleWhileRevalidate:
    """Serve ``entry`` now, marked stale, and refresh it in the background
    (one flight per key, under the key itself: the credential was accepted)."""

    entry: Entry
    revalidate: Entry | None
    """The copy to revalidate with ``update_time`` (None: fetch it whole)."""


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask slurmrestd: join the flight running under ``flight_key`` (or
    ``join_also``), else start one."""

    flight_key: bytes
    """The key itself for an accepted credential; the key plus the credential
    otherwise (slurmrestd must judge it before anything is shared)."""
    join_also: bytes | None
    """For an accepted credential: the flight that got it accepted may still
    run under its unaccepted key; joining it saves a second fetch."""
    accepted: bool
    revalidate: Entry | None
    """An expired, still valid copy of a rule that revalidates: the fetch asks
    ``update_time`` instead of the whole list (:class:`Revalidate`'s case)."""
    fallback: Entry | None
    """An expired copy that may stand in if upstream fails (stale-if-error)."""

    @property
    def forget_credential(self) -> bool:
        """The store holds no acceptance (revoked elsewhere, or a restarted
        Redis): whatever this process recorded of it is forgotten."""
        return not self.accepted


Revalidate = Fetch
"""A :class:`Fetch` with ``revalidate`` set (named for the state tables)."""


def store_down(local_writes: int) -> Lookup:
    """The lookup to decide on while the store cannot answer: nothing to
    serve or trust, and generations that move with this process's writes
    (read-your-writes holds through this process)."""
    return Lookup(None, (STORE_DOWN, local_writes), 0.0)


def on_lookup(
    match: Match, credential: bytes, key: bytes, found: Lookup, now: float
) -> FreshHit | StaleWhileRevalidate | Fetch:
    """The decision for a cacheable GET, given the store's answer and the time."""
    accepted = found.accepted_until > now
    entry = found.entry
    valid = entry is not None and accepted and entry.is_valid(match.tags, found.generations)
    if valid:
        assert entry is not None
        if entry.is_fresh(now):
            return FreshHit(entry, now)
    rule = match.rule
    stale = entry if valid and rule is not None and rule.revalidate is not None else None
    fallback = policy.stale_fallback(entry, accepted, match, found.generations, now)
    if (
        fallback is not None
        and rule is not None
        and now < fallback.stored_at + fallback.ttl + rule.stale_while_revalidate
    ):
        return StaleWhileRevalidate(fallback, stale)
    if accepted:
        return Fetch(key, key + credential, True, stale, fallback)
    return Fetch(key + credential, None, False, stale, fallback)


# -- after the flight ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendFlight:
    """Relay the flight's answer (shared, or this request's own)."""


@dataclass(frozen=True, slots=True)
class ForwardOwn:
    """The leader's credential was refused (or the answer can no longer be
    replayed whole): ask slurmrestd with this request's own credential."""


@dataclass(frozen=True, slots=True)
class ServeStale:
    """Upstream failed: an expired copy stands in (stale-if-error)."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class UpstreamFailed:
    """Upstream failed and nothing may stand in: the error, in slurmrestd's shape."""


SEND_FLIGHT = SendFlight()
FORWARD_OWN = ForwardOwn()
UPSTREAM_FAILED = UpstreamFailed()


def on_flight_error(fetch: Fetch) -> ServeStale | UpstreamFailed:
    """The flight failed before any head came."""
    return UPSTREAM_FAILED if fetch.fallback is None else ServeStale(fetch.fallback)


def after_flight(
    fetch: Fetch, led: bool, refused: bool, failed: bool
) -> SendFlight | ForwardOwn | ServeStale:
    """Once the flight's head came: ``led`` says the flight carries this
    request's own credential; ``refused`` that slurmrestd refused the
    leader's (or the body can no longer be replayed); ``failed`` that
    upstream failed it (a 502/503/504 or a broken small body)."""
    if not led and refused:
        return FORWARD_OWN
    if fetch.fallback is not None and failed:
        return ServeStale(fetch.fallback)
    return SEND_FLIGHT


# -- upstream's answer ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Store:
    """Store the answer as this entry, compressed first (``compress_now``) or
    stored plain and compressed off the response path (``compress_later``)."""

    entry: Entry
    compress_now: bool
    compress_later: bool


def to_store(
    status: int,
    resp_headers: Headers,
    body: bytes,
    match: Match,
    generations: Generations,
    *,
    shareable: bool,
    max_entry_bytes: int,
    now: float,
    origin: float,
    shared: bool = False,
) -> Store | None:
    """Whether and how an answer is stored (None: it is not).

    A shared entry keeps where its ``meta.client.source`` is (found now, once)
    and, for its compressed answers, gzip parts around it instead of whole
    copies (:mod:`cacheproxy.core.splice`): each answer splices the
    requester's own in, nothing is compressed again.  An answer whose source
    cannot be located with certainty is not stored as a shared entry."""
    if not shareable or not policy.response_storable(status, resp_headers, body, max_entry_bytes):
        return None
    content_type = policy.header_value(resp_headers, b"content-type")
    span = splice.source_span(body, content_type) if shared else None
    if span == splice.UNSURE:
        return None
    compressible = compress.compressible(content_type)
    later = compressible and len(body) >= COMPRESS_INLINE_BELOW
    entry = Entry(
        status=status,
        headers=_with_length(resp_headers, len(body)),
        body=body,
        stored_at=now,
        ttl=match.ttl,
        tags=match.tags,
        generations=generations,
        stale_for=policy.keep_after_expiry(match),
        variants=(),
        origin=origin,
        splice=span,
    )
    return Store(entry, compressible and not later, compressible and later)


def peer_entry_usable(
    entry: Entry | None, match: Match, found: Lookup, flight_gens: Generations, now: float
) -> bool:
    """Whether the entry another replica stored while this one waited for
    its lease may complete this flight: fresh, valid, and stored under the
    generations the flight started with (no write came between)."""
    return (
        entry is not None
        and entry.is_fresh(now)
        and entry.is_valid(match.tags, found.generations)
        and entry.generations == flight_gens
    )


@dataclass(frozen=True, slots=True)
class Accept:
    """slurmrestd accepted the credential: trusted until ``until``;
    ``record``: write it to the store (False: this process recorded it
    recently enough)."""

    until: float
    record: bool


@dataclass(frozen=True, slots=True)
class Revoke:
    """slurmrestd refused the credential: forget and revoke any acceptance."""


REVOKE = Revoke()

AUTHORITATIVE_FAMILIES = frozenset({"slurm", "slurmdb"})
"""Answers under these asked slurmctld or slurmdbd, which checked the token."""


def credential_verdict(
    identity: Identity,
    match: Match,
    status: int,
    body: bytes | None,
    head: bytes,
    content_type: bytes | None,
    *,
    now: float,
    auth_ttl: float,
    recorded_until: float,
) -> Accept | Revoke | None:
    """What upstream's answer says of the credential (None: nothing).

    Only answers that asked slurmctld or slurmdbd accept (never the OpenAPI
    documents, which 22.05 serves to any token); an acceptance is written
    again only once this process's record of it is half spent."""
    if match.family in AUTHORITATIVE_FAMILIES and policy.credential_accepted(
        status, body, content_type
    ):
        until = policy.accepted_until(identity, now, auth_ttl)
        if until <= now:
            return None
        return Accept(until, recorded_until - now < auth_ttl / 2)
    if policy.credential_refused(status, body if body is not None else head):
        return REVOKE
    return None


def invalidates(match: Match, status: int, resp_headers: Headers, body: bytes | None) -> bool:
    """Whether a write's answer invalidates ``match.invalidates``: always,
    unless slurmrestd says it did nothing (:func:`policy.write_refused`)."""
    return bool(match.invalidates) and not policy.write_refused(status, resp_headers, body)


def invalidates_before(match: Match, writer_accepted: bool) -> bool:
    """Whether a write invalidates already before it is forwarded (narrowing
    the window in which a reader refills the cache with pre-write data): only
    for a write a rule knows, from a credential slurmrestd accepted."""
    return bool(match.invalidates) and match.rule is not None and writer_accepted


def invalidates_after_fault(match: Match, sent: bool) -> bool:
    """A write whose answer never came: it may have been done once sent."""
    return bool(match.invalidates) and sent


# -- requests the cache does not serve --------------------------------------
@dataclass(frozen=True, slots=True)
class Forward:
    """Pass the request through; ``outcome`` is its ``Cache-Status``."""

    outcome: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer without slurmrestd: ``status`` and why."""

    status: int
    reason: str


def forward_outcome(method: str, match: Match) -> str:
    """Why the cache did not answer, for ``Cache-Status`` (RFC 9211 ``fwd``)."""
    if match.cache:  # a cacheable path, but this request may not use the cache
        return "fwd=request"
    if match.invalidates or method not in ("GET", "HEAD", "OPTIONS"):
        return "fwd=method"
    return "fwd=bypass" if match.rule is not None else "fwd=uri-miss"


def uncached(method: str, match: Match) -> Forward | Refuse:
    """A request the cache does not serve: forwarded, unless its method is
    one slurmrestd must never see."""
    if method in REFUSED_METHODS:
        return Refuse(405, f"{method} is not proxied")
    return Forward(forward_outcome(method, match))


def _with_length(resp_headers: Headers, length: int) -> Headers:
    out = [(k, v) for k, v in resp_headers if k != b"content-length"]
    out.append((b"content-length", b"%d" % length))
    return out
