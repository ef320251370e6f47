"""Brute-force defence and a per-user rate limit, as ASGI middleware.

slurmrestd's documentation asks sites to reject clients that repeatedly fail
to authenticate.  This middleware watches the status of every response on its
way out (it wraps ``send``, like Starlette middleware) and counts
authentication failures, per client address and per claimed user name, in a
sliding window:

* 401 (missing or refused credential, also the proxy's own JWT check),
* 511 (a bad or expired JWT, slurmrestd 25.x),
* a 500 whose error is an authentication failure (slurmrestd 22.05 answers a
  wrong token that way; see :func:`cacheproxy.policy.credential_refused`).

Past ``fail_limit`` failures within ``window`` seconds the address (or the
user name) is answered 429 with ``Retry-After`` for ``cooldown`` seconds,
without reaching slurmrestd.  The message is terse and the same for both, so
it tells an attacker nothing about which names exist.

A block would let anyone lock a user out by guessing tokens in their name, or
lock out everyone behind a portal's single address, so a request whose
credential slurmrestd accepted recently (the proxy's acceptance record) still
passes a blocked name or address.  An ambiguous 500 (22.05 answers a wrong
token and an unreachable slurmctld alike) counts only against a credential
that was never accepted.  IPv6 addresses are counted per /64: one host usually owns one.

On the hit path this costs one dict lookup (is anything blocked at all?): a
hit takes the fast lane (:mod:`cacheproxy.fastlane`) while nothing is blocked
and the rate limit is off.  Header scans happen only on failures, while
something is blocked, or with the optional rate limit on.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from cacheproxy import errors, policy
from cacheproxy.endpoints import OWN_PREFIX
from cacheproxy.fastlane import FastResult, responder_of
from cacheproxy.identity import AUTHORIZATION, USER_NAME, USER_TOKEN, jwt_claims
from cacheproxy.respond import ASGIApp, Message, Receive, Scope, Send, retry_after, send_error
from cacheproxy.stats import Stats
from cacheproxy.upstream.base import Headers

log = logging.getLogger("cacheproxy.guard")

AUTH_FAILURE_STATUSES = frozenset({401, 511})
_MAX_KEYS = 100_000
_MAX_NAME = 256

IsAccepted = Callable[[Headers], Awaitable[bool]]
"""Whether the request's credential was accepted by slurmrestd recently."""


def client_key(scope: Scope) -> str:
    """The client address a failure is charged to (IPv6: its /64)."""
    client = scope.get("client")
    host = str(client[0]) if client else ""
    if ":" in host:
        try:
            net = ipaddress.IPv6Network(f"{host}/64", strict=False)
            return "a:" + str(net.network_address) + "/64"
        except ValueError:
            pass
    return "a:" + host


def claimed_user(headers: Headers) -> str | None:
    """The user name a request claims: the header, else the JWT's ``sun``.

    Unverified: it only decides whose counter a failure is charged to.
    """
    token: bytes | None = None
    for k, v in headers:
        if k == USER_NAME:
            return "u:" + v[:_MAX_NAME].decode("latin-1")
        if k == USER_TOKEN:
            token = v
        elif k == AUTHORIZATION and token is None and v[:7].lower() == b"bearer ":
            token = v[7:].strip()
    if token:
        sun = (jwt_claims(token) or {}).get("sun")
        if isinstance(sun, str):
            return "u:" + sun[:_MAX_NAME]
    return None


class _Window:
    """Failure times per key within a sliding window, bounded in keys."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._times: dict[str, deque[float]] = {}

    def add(self, key: str, now: float) -> bool:
        """Record a failure; True when ``key`` has reached the limit."""
        times = self._times.get(key)
        if times is None:
            if len(self._times) >= _MAX_KEYS:
                self._prune(now)
            times = self._times[key] = deque(maxlen=self.limit)
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        return len(times) >= self.limit

    def forget(self, key: str) -> None:
        self._times.pop(key, None)

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        for key in [k for k, t in self._times.items() if not t or t[-1] <= horizon]:
            del self._times[key]
        while len(self._times) >= _MAX_KEYS:  # still full: drop the oldest keys
            del self._times[next(iter(self._times))]


class _Buckets:
    """Token buckets per user name: ``rate`` requests/s, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float) -> float:
        """0.0 when a request may pass, else seconds until one may."""
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            if len(self._state) >= _MAX_KEYS and key not in self._state:
                self._state.clear()  # full buckets are the default: losing them is safe
            self._state[key] = (tokens - 1.0, now)
            return 0.0
        self._state[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


class AuthGuard:
    """ASGI middleware: 429 after repeated authentication failures, and an
    optional per-user token-bucket rate limit.  See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        fail_limit: int = 10,
        window: float = 60.0,
        cooldown: float = 300.0,
        user_rate: float = 0.0,
        user_burst: int = 20,
        is_accepted: IsAccepted | None = None,
        stats: Stats | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.enabled = fail_limit > 0
        self.cooldown = cooldown
        self._failures = _Window(max(fail_limit, 1), window)
        self._blocked: dict[str, float] = {}
        self._buckets = _Buckets(user_rate, user_burst) if user_rate > 0 else None
        self._is_accepted = is_accepted
        self.stats = stats if stats is not None else Stats()
        self._now = monotonic
        self._next_prune = 0.0
        self._inner_fast = responder_of(app)

    def fast_response(self, scope: Scope) -> FastResult:
        """See :mod:`cacheproxy.fastlane`.  Steps aside while anything is
        blocked and with the rate limit on; a fast hit is never a failure
        (the proxy answers only 200s there), so nothing needs watching."""
        inner = self._inner_fast
        if inner is None or self._blocked or self._buckets is not None:
            return None
        return inner(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._blocked and await self._refuse_blocked(scope, send):
            return
        if self._buckets is not None and await self._refuse_rate(scope, send):
            return
        if not self.enabled:
            await self.app(scope, receive, send)
            return
        pending_500 = False

        async def watch(message: Message) -> None:
            nonlocal pending_500
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                if status in AUTH_FAILURE_STATUSES:
                    self._failure(scope)
                elif status == 500:
                    pending_500 = True
            elif pending_500 and kind == "http.response.body":
                pending_500 = False
                # 22.05 gives a wrong token and a stuck slurmctld the very same
                # 500: it counts only against a credential never accepted, so
                # a controller outage does not lock out its real users.
                if policy.credential_refused(
                    500, bytes(message.get("body", b""))[:4096]
                ) and not await self._accepted(scope):
                    self._failure(scope)
            await send(message)

        await self.app(scope, receive, watch)

    # -- blocking -----------------------------------------------------------
    def _failure(self, scope: Scope) -> None:
        now = self._now()
        keys = [client_key(scope)]
        user = claimed_user(scope["headers"])
        if user is not None:
            keys.append(user)
        for key in keys:
            if self._failures.add(key, now):
                self._failures.forget(key)
                if key not in self._blocked:
                    log.warning(
                        "too many authentication failures from %s: refused for %.0f s",
                        key[2:],
                        self.cooldown,
                    )
                if len(self._blocked) >= _MAX_KEYS:
                    self._prune_blocked(now, force=True)
                self._blocked[key] = now + self.cooldown

    def _prune_blocked(self, now: float, force: bool = False) -> None:
        """Forget expired blocks (at most once a second), so the hit path
        is back to one empty-dict check once an episode is over."""
        if not force and now < self._next_prune:
            return
        self._next_prune = now + 1.0
        blocked = self._blocked
        for key in [k for k, until in blocked.items() if until <= now]:
            del blocked[key]
        while len(blocked) >= _MAX_KEYS:  # still full: drop the oldest blocks
            del blocked[next(iter(blocked))]

    async def _refuse_blocked(self, scope: Scope, send: Send) -> bool:
        now = self._now()
        self._prune_blocked(now)
        blocked = self._blocked
        if not blocked:
            return False
        until = 0.0
        for key in (client_key(scope), claimed_user(scope["headers"])):
            if key is None:
                continue
            key_until = blocked.get(key, 0.0)
            if key_until <= now:
                blocked.pop(key, None)
            until = max(until, key_until)
        if until <= now:
            return False
        if await self._accepted(scope):
            # A credential slurmrestd accepted passes a blocked name or address:
            # a guesser cannot lock out the real user, nor everyone behind a
            # portal's one address; the guesser's own tokens stay refused.
            return False
        self.stats.auth_blocked += 1
        await send_error(send, errors.AUTH_BLOCKED, "auth-blocked", [retry_after(until - now)])
        return True

    async def _accepted(self, scope: Scope) -> bool:
        return self._is_accepted is not None and await self._is_accepted(scope["headers"])

    async def _refuse_rate(self, scope: Scope, send: Send) -> bool:
        assert self._buckets is not None
        if scope["path"].startswith(OWN_PREFIX):
            return False
        user = claimed_user(scope["headers"])
        if user is None:
            return False
        wait = self._buckets.take(user, self._now())
        if wait <= 0.0:
            return False
        self.stats.rate_limited += 1
        await send_error(send, errors.RATE_LIMITED, "rate-limited", [retry_after(wait)])
        return True
