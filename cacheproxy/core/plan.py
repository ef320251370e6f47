"""Planning a GET: request -> identity -> rule -> key, from one scan of its
headers and memoised parsing and keys.

Runs once for every GET (:meth:`cacheproxy.http.proxy.Proxy.respond`), so
every decision is made from one canonical request (the target's canonical
parse, :mod:`cacheproxy.core.request`, and the headers as forwarded,
:class:`cacheproxy.core.headers.RequestView`).  The plan carries that view: a
miss forwards exactly the headers the key and identity were computed from.

Not served from the cache (a bare :class:`Route`): a target slurmrestd would
refuse or the proxy cannot canonicalise (path characters, the query), a
delta (``update_time`` in any spelling), a GET with a body (since 23.11.6
slurmrestd reads the body *as* the query, src/slurmrestd/operations.c
``_get_query``; 22.05 answers 400): it is forwarded with its body as
received, never cached.

The route and key memos are bounded in bytes (:mod:`cacheproxy.core.memo`):
their keys are what clients send.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cacheproxy.core import usertag
from cacheproxy.core.headers import RequestView
from cacheproxy.core.identity import Identity, IdentityResolver
from cacheproxy.core.keys import cache_key
from cacheproxy.core.memo import ByteMemo
from cacheproxy.core.request import (
    MAX_URL_BYTES,
    BadRequest,
    Query,
    canonical_query,
    path_canonical,
    split_path,
)
from cacheproxy.core.rules import Match, RuleSet

ROUTE_MEMO_BYTES = 32 * 1024 * 1024
KEY_MEMO_BYTES = 32 * 1024 * 1024
SHARED_USER = "*shared"
"""The user part of a shared entry's key: no identity's user (``name:``,
``sun:``, ``cred:``) can spell it."""


def _never_shared(rule: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Route:
    """A parsed, matched GET target (memoised by raw path and query)."""

    segments: tuple[str, ...]
    query: Query | None
    """The canonical query (None: it cannot be canonicalised)."""
    match: Match
    cacheable: bool
    """The rule caches it, the target is canonical and not a delta
    (``update_time``)."""


@dataclass(slots=True)
class GetPlan:
    """A cacheable GET with one usable identity: what the lookup needs.
    (Not frozen: built per request, and a frozen init costs four times more.)"""

    route: Route
    """The memoised parse of the target (a miss builds its request from it)."""
    match: Match
    """The rule's match, with the user's tag added."""
    identity: Identity
    key: bytes
    accept_encoding: bytes
    view: RequestView
    """The headers as forwarded: what identity and key were computed from."""
    shared: bool = False
    """The entry is one for every accepted credential (the route's scope)."""


class Planner:
    """Plans GETs against ``rules``, with identities from ``resolver``; owns
    the route and key memos."""

    def __init__(
        self,
        rules: RuleSet,
        resolver: IdentityResolver,
        *,
        route_bytes: int = ROUTE_MEMO_BYTES,
        key_bytes: int = KEY_MEMO_BYTES,
        shared: Callable[[str], bool] = _never_shared,
    ) -> None:
        self.rules = rules
        self.resolver = resolver
        self.shared = shared
        """Whether a rule's scope is shared now (:class:`cacheproxy.http.sitescope.SiteScopes`)."""
        self._routes: ByteMemo[tuple[bytes, bytes], Route] = ByteMemo(route_bytes)
        self._keys: ByteMemo[tuple[bytes, bytes, bytes | None, str], tuple[bytes, Match]] = (
            ByteMemo(key_bytes)
        )

    def plan(self, scope: Mapping[str, Any]) -> GetPlan | Route | None:
        """Everything a cached GET needs from the request, from one scan of
        its headers and memoised parsing and keys.

        None: a target that does not parse.  A bare :class:`Route`: the GET
        is not served from the cache (the rule does not cache it, the target
        is not canonical, it has a body, or there is no single usable
        identity; ``route.cacheable`` is False for the first two).
        """
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw_query: bytes = scope["query_string"]
        route = self._routes.get((raw_path, raw_query))
        if route is None:
            try:
                route = self._route(raw_path, raw_query)
            except BadRequest:
                return None
        if not route.cacheable:
            return route  # (before the header scan: a GET passed through needs none)
        view = RequestView(scope["headers"])
        if view.has_body or view.repeated:
            return route
        identity = self.resolver.resolve_values(view.name, view.token, view.auth)
        if identity is None:
            return route
        accept = view.accept
        shared = self.shared(route.match.name)
        user = SHARED_USER if shared else identity.user
        key_id = (raw_path, raw_query, accept, user)
        memo = self._keys.get(key_id)
        if memo is None:
            assert route.query is not None  # a cacheable route has a canonical query
            key = cache_key(user, "GET", route.segments, route.query, accept)
            memo = (key, route.match if shared else self._with_user_tag(route.match, user))
            size = len(raw_path) + len(raw_query) + len(accept or b"") + 2 * len(user)
            self._keys.put(key_id, memo, size + 200)
        key, match = memo
        return GetPlan(route, match, identity, key, view.accept_encoding, view, shared)

    def _with_user_tag(self, match: Match, user: str) -> Match:
        """``match`` with the user's tag added to the entry's tags, so one bump
        purges a user's entries (keys are digests: nothing can list them)."""
        name = usertag.user_name(user)
        if name is None:  # an anonymous credential: no admin can name it
            return match
        return dataclasses.replace(match, tags=(*match.tags, self.resolver.user_tag(name)))

    def _route(self, raw_path: bytes, raw_query: bytes) -> Route:
        """Parse and match a GET target once; later requests reuse it."""
        if len(raw_path) + len(raw_query) + 1 > MAX_URL_BYTES or not raw_path.startswith(b"/"):
            raise BadRequest("bad request target")
        segments = split_path(raw_path)
        query = canonical_query(raw_query)
        match = self.rules.match("GET", segments)
        cacheable = (
            match.cache
            and query is not None
            and path_canonical(raw_path)
            and not any(k == b"update_time" for k, _ in query)
        )
        route = Route(segments, query, match, cacheable)
        # (the route holds the target about three times: raw, decoded, parsed)
        self._routes.put((raw_path, raw_query), route, 3 * (len(raw_path) + len(raw_query)) + 300)
        return route
