"""Brute-force defence and a per-user rate limit: a step of the pipeline.

slurmrestd's documentation asks sites to reject clients that repeatedly fail
to authenticate.  This step watches the status of every response on its
way out (``leave``, :mod:`cacheproxy.http.pipeline`) and counts
authentication failures, per client address and per claimed user name, in a
sliding window:

* 401 (missing or refused credential, also the proxy's own JWT check),
* 511 (a bad or expired JWT, slurmrestd 25.x),
* a 500 whose error is an authentication failure (slurmrestd 22.05 answers a
  wrong token that way; see :func:`cacheproxy.core.policy.credential_refused`),
* a 403 of the admin API (a wrong admin token), charged to the address only.

Past ``fail_limit`` failures within ``window`` seconds the address (or the
user name) is answered 429 with ``Retry-After`` for ``cooldown`` seconds,
without reaching slurmrestd.  The message is terse and the same for both, so
it tells an attacker nothing about which names exist.  The client address is
the socket's, or the one a configured load balancer forwarded
(``forwarded_allow_ips``; none by default): a header anyone can send must not
choose whom a failure is charged to.

A block must not lock out anyone whose credential is good, however many
guesses others made in their name or from their address:

* a credential slurmrestd accepted recently (the proxy's acceptance record)
  passes a blocked name or address;
* with local JWT verification on, a request whose tokens all verify passes
  too (``proves_itself``): it proves itself without asking slurmctld;
* without it, a never-accepted credential claiming a blocked *name*, from an
  address that is not blocked, is tried upstream once (a *trial*), so the
  real user's new token gets slurmrestd's verdict rather than a 429.  Trials
  are bounded, so a guesser cannot use them to hammer slurmctld: one per
  distinct credential per cool-down, at most ``fail_limit`` per blocked name
  and a tenth of that (at least one) per address per cool-down, and a failed
  trial counts as a failure like any other.

An ambiguous 500 (22.05 answers a wrong token and an unreachable slurmctld
alike) counts only against a credential that was never accepted.  IPv6
addresses are counted per /64: one host usually owns one.  The proxy's own
unauthenticated endpoints (health, readiness, metrics, the status page) are
never blocked: refusing them protects nothing and would take a replica out of
its balancer's pool.

On the hit path this costs one dict lookup (is anything blocked at all?).
Header scans happen only on failures, while something is blocked, or with
the optional rate limit on; only a request charged to a block it might pass
(its credential accepted, a trial) awaits anything.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable

from cacheproxy.core import errors, policy
from cacheproxy.core.identity import AUTHORIZATION, USER_NAME, USER_TOKEN, jwt_claims
from cacheproxy.http.pipeline import BaseStep, Exchange, Verdict
from cacheproxy.http.respond import Response, Scope, error_response, retry_after
from cacheproxy.ops.paths import ADMIN_PREFIX, OWN_PREFIX
from cacheproxy.stats import Stats
from cacheproxy.upstream.base import Headers

log = logging.getLogger("cacheproxy.guard")

AUTH_FAILURE_STATUSES = frozenset({401, 511})
_MAX_KEYS = 100_000
_MAX_NAME = 256
_ADMIN = OWN_PREFIX + ADMIN_PREFIX

IsAccepted = Callable[[Headers], Awaitable[bool]]
"""Whether the request's credential was accepted by slurmrestd recently."""

ProvesItself = Callable[[Headers], bool]
"""Whether the request's tokens all verify locally (signature and expiry)."""


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


def _own(path: str) -> bool:
    """A path of the proxy's own endpoints (never forwarded)."""
    return path.startswith(OWN_PREFIX)


def _admin(path: str) -> bool:
    return path.startswith(_ADMIN)


class _Window:
    """Event times per key within a sliding window, bounded in keys."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._times: dict[str, deque[float]] = {}

    def add(self, key: str, now: float) -> bool:
        """Record an event; True when ``key`` has reached the limit."""
        times = self._times.get(key)
        if times is None:
            if len(self._times) >= _MAX_KEYS:
                self._prune(now)
            times = self._times[key] = deque(maxlen=self.limit)
        times.append(now)
        self._expire(times, now)
        return len(times) >= self.limit

    def full(self, key: str, now: float) -> bool:
        """Whether ``key`` has reached the limit (nothing recorded)."""
        times = self._times.get(key)
        if times is None:
            return False
        self._expire(times, now)
        return len(times) >= self.limit

    def forget(self, key: str) -> None:
        self._times.pop(key, None)

    def _expire(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        for key in [k for k, t in self._times.items() if not t or t[-1] <= horizon]:
            del self._times[key]
        while len(self._times) >= _MAX_KEYS:  # still full: drop the oldest keys
            del self._times[next(iter(self._times))]


class _Trials:
    """The bounded upstream checks of never-accepted credentials claiming a
    blocked name (see the module docstring): one per credential, and a
    budget per name and per address, all per cool-down."""

    def __init__(self, fail_limit: int, cooldown: float) -> None:
        self.cooldown = cooldown
        self._per_name = _Window(max(fail_limit, 1), cooldown)
        self._per_address = _Window(max(fail_limit // 10, 1), cooldown)
        self._tried: dict[bytes, float] = {}
        """digest of a credential -> until when it may not be tried again."""
        self._key = secrets.token_bytes(32)

    def grant(self, headers: Headers, name: str, address: str, now: float) -> bool:
        """Whether this request may be tried upstream; a grant is counted."""
        digest = self._digest(headers)
        if digest is None:
            return False  # no token: nothing that could prove itself
        until = self._tried.get(digest)
        if until is not None and until > now:
            return False
        if self._per_name.full(name, now) or self._per_address.full(address, now):
            return False
        self._per_name.add(name, now)
        self._per_address.add(address, now)
        if len(self._tried) >= _MAX_KEYS:
            self._prune(now)
        self._tried[digest] = now + self.cooldown
        return True

    def _digest(self, headers: Headers) -> bytes | None:
        """A keyed hash of every credential header (never the token itself)."""
        h = hashlib.blake2b(key=self._key, digest_size=16)
        found = False
        for k, v in headers:
            if k in (USER_TOKEN, AUTHORIZATION, USER_NAME):
                found = found or k != USER_NAME
                h.update(k + b"\0" + v + b"\0")
        return h.digest() if found else None

    def _prune(self, now: float) -> None:
        tried = self._tried
        for digest in [d for d, until in tried.items() if until <= now]:
            del tried[digest]
        while len(tried) >= _MAX_KEYS:  # still full: drop the oldest
            del tried[next(iter(tried))]


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


class AuthGuard(BaseStep):
    """A step of the pipeline: 429 after repeated authentication failures,
    and an optional per-user token-bucket rate limit.  See the module docstring."""

    def __init__(
        self,
        *,
        fail_limit: int = 10,
        window: float = 60.0,
        cooldown: float = 300.0,
        user_rate: float = 0.0,
        user_burst: int = 20,
        is_accepted: IsAccepted | None = None,
        proves_itself: ProvesItself | None = None,
        stats: Stats | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = fail_limit > 0
        self.cooldown = cooldown
        self._failures = _Window(max(fail_limit, 1), window)
        self._blocked: dict[str, float] = {}
        self._trials = _Trials(fail_limit, cooldown)
        self._buckets = _Buckets(user_rate, user_burst) if user_rate > 0 else None
        self._is_accepted = is_accepted
        self._proves_itself = proves_itself
        self.stats = stats if stats is not None else Stats()
        self._now = monotonic
        self._next_prune = 0.0

    def enter(self, ex: Exchange) -> Verdict:
        """Nothing blocked and no rate limit (nearly always): one dict check."""
        if self._blocked:
            verdict = self._refuse_blocked(ex.scope)
            if verdict is not None:
                return verdict
        if self._buckets is not None:
            return self._refuse_rate(ex.scope)
        return None

    leaves_on = AUTH_FAILURE_STATUSES | {403, 500}
    """A hit (200) does not call :meth:`leave`."""

    def leave(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.enabled:
            return
        scope = ex.scope
        if status in AUTH_FAILURE_STATUSES or (status == 403 and _admin(scope["path"])):
            self._failure(scope)
        elif status == 500:
            ex.watch_body = True

    async def first_body(self, ex: Exchange, body: bytes) -> None:
        # 22.05 gives a wrong token and a stuck slurmctld the very same 500:
        # it counts only against a credential never accepted, so a controller
        # outage does not lock out its real users.
        if (
            self.enabled
            and ex.status == 500
            and policy.credential_refused(500, body[:4096])
            and not await self._accepted(ex.scope)
        ):
            self._failure(ex.scope)

    # -- blocking -----------------------------------------------------------
    def _charged(self, scope: Scope) -> tuple[str, str | None]:
        """The address and the claimed user name (None: not charged) of a
        request.  The own endpoints' failures (a wrong admin token) are the
        address's only: an admin token names no Slurm user."""
        user = None if _own(scope["path"]) else claimed_user(scope["headers"])
        return client_key(scope), user

    def _failure(self, scope: Scope) -> None:
        now = self._now()
        address, user = self._charged(scope)
        for key in (address, user):
            if key is None:
                continue
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

    def _until(self, key: str | None, now: float) -> float:
        """Until when ``key`` is blocked (0.0: it is not)."""
        if key is None:
            return 0.0
        until = self._blocked.get(key, 0.0)
        if until <= now:
            self._blocked.pop(key, None)
            return 0.0
        return until

    def _refuse_blocked(self, scope: Scope) -> Verdict:
        path = scope["path"]
        if _own(path) and not _admin(path):
            return None  # unauthenticated endpoints: a block protects nothing
        now = self._now()
        self._prune_blocked(now)
        if not self._blocked:
            return None
        address, user = self._charged(scope)
        address_until, user_until = self._until(address, now), self._until(user, now)
        until = max(address_until, user_until)
        if until <= now:
            return None
        if _admin(path):
            return self._blocked_answer(until, now)
        return self._unless_passes(scope, address, address_until > now, user, now, until)

    async def _unless_passes(
        self,
        scope: Scope,
        address: str,
        address_blocked: bool,
        user: str | None,
        now: float,
        until: float,
    ) -> Response | None:
        if await self._passes(scope, address, address_blocked, user, now):
            return None
        return self._blocked_answer(until, now)

    def _blocked_answer(self, until: float, now: float) -> Response:
        self.stats.auth_blocked += 1
        return error_response(
            errors.AUTH_BLOCKED, "detail=auth-blocked", [retry_after(until - now)]
        )

    async def _passes(
        self, scope: Scope, address: str, address_blocked: bool, user: str | None, now: float
    ) -> bool:
        """Whether a request passes a block anyway: a guesser must not lock
        out the real user, nor everyone behind a portal's one address."""
        headers = scope["headers"]
        if self._proves_itself is not None and self._proves_itself(headers):
            self.stats.auth_proven += 1
            return True
        if await self._accepted(scope):
            return True
        if address_blocked or user is None or self._proves_itself is not None:
            return False  # with local verification, a trial could add nothing
        if self._trials.grant(headers, user, address, now):
            self.stats.auth_trials += 1
            return True
        return False

    async def _accepted(self, scope: Scope) -> bool:
        return self._is_accepted is not None and await self._is_accepted(scope["headers"])

    def _refuse_rate(self, scope: Scope) -> Response | None:
        assert self._buckets is not None
        if _own(scope["path"]):
            return None
        user = claimed_user(scope["headers"])
        if user is None:
            return None
        wait = self._buckets.take(user, self._now())
        if wait <= 0.0:
            return None
        self.stats.rate_limited += 1
        return error_response(errors.RATE_LIMITED, "detail=rate-limited", [retry_after(wait)])
