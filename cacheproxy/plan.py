"""Planning a GET: request -> identity -> rule -> key, from one scan of its
headers and memoised parsing and keys.

Runs once for every GET: on the fast lane, which leaves its plan in the
scope for the ASGI path, or else on the ASGI path itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cacheproxy import usertag
from cacheproxy.identity import Identity, IdentityResolver
from cacheproxy.keys import cache_key
from cacheproxy.request import MAX_URL_BYTES, BadRequest, parse_query, split_path
from cacheproxy.respond import Scope
from cacheproxy.rules import Match, RuleSet

_MEMO_MAX = 16_384


@dataclass(frozen=True, slots=True)
class Route:
    """A parsed, matched GET target (memoised by raw path and query)."""

    segments: tuple[str, ...]
    query: tuple[tuple[str, str], ...]
    match: Match
    cacheable: bool
    """The rule caches it and the query is not a delta (``update_time``)."""


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
    has_body: bool
    """The request announced a body (a GET should not: left to the ASGI path)."""


class Planner:
    """Plans GETs against ``rules``, with identities from ``resolver``; owns
    the route and key memos."""

    def __init__(self, rules: RuleSet, resolver: IdentityResolver) -> None:
        self.rules = rules
        self.resolver = resolver
        self._routes: dict[tuple[bytes, bytes], Route] = {}
        self._keys: dict[tuple[bytes, bytes, bytes, str], tuple[bytes, Match]] = {}

    def plan(self, scope: Scope) -> GetPlan | Route | None:
        """Everything a cached GET needs from the request, from one scan of
        its headers and memoised parsing and keys.

        None: a target that does not parse.  A bare :class:`Route`: the GET
        is not served from the cache (the rule does not cache it, or there is
        no single usable identity; ``route.cacheable`` tells which).
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
        name = token = auth = None
        accept = b""
        accept_encoding = b""
        repeated = False
        has_body = False
        for k, v in scope["headers"]:
            if k == b"x-slurm-user-name":
                repeated |= name is not None
                name = v
            elif k == b"x-slurm-user-token":
                repeated |= token is not None
                token = v
            elif k == b"authorization":
                repeated |= auth is not None
                auth = v
            elif k == b"accept":
                accept = v if not accept else accept + b", " + v
            elif k == b"accept-encoding":
                accept_encoding = v
            elif k == b"content-length":
                has_body |= v != b"0"
            elif k == b"transfer-encoding":
                has_body = True
        identity = None if repeated else self.resolver.resolve_values(name, token, auth)
        if identity is None:
            return route
        key_id = (raw_path, raw_query, accept, identity.user)
        memo = self._keys.get(key_id)
        if memo is None:
            key = cache_key(identity.user, "GET", route.segments, route.query, accept)
            memo = (key, self._with_user_tag(route.match, identity.user))
            if len(self._keys) >= _MEMO_MAX:
                self._keys.clear()
            self._keys[key_id] = memo
        key, match = memo
        return GetPlan(route, match, identity, key, accept_encoding, has_body)

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
        query = parse_query(raw_query)
        match = self.rules.match("GET", segments)
        cacheable = match.cache and not any(k == "update_time" for k, _ in query)
        route = Route(segments, query, match, cacheable)
        if len(self._routes) >= _MEMO_MAX:
            self._routes.clear()
        self._routes[(raw_path, raw_query)] = route
        return route
