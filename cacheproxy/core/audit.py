"""The audit of shared views: when to compare, how, and what a comparison
means (pure: no I/O; the clock and the bodies are passed in; the mechanism
is :mod:`cacheproxy.http.audit`).

Why an audit: a shared route is one entry for every accepted credential
because the site's ``PrivateData`` says slurmrestd answers it alike for all
(:mod:`cacheproxy.core.scopes`).  If that setting is wrong (``none`` told to
the proxy while slurmctld hides jobs), every shared answer to another user is
a leak.  The audit is the safety net: now and then it asks slurmrestd the
same question as a second user and compares.

**Two views at the same moment, without holding anyone's token.**  The
entry's filler's credential is gone once its request is answered (tokens are
never stored), so the audit cannot refetch "as the filler" later.  Instead
the pair is the *fill itself* and a fetch as the *next different accepted
user* whose request comes within ``window`` seconds (default 1 s, the
resolution of slurmctld's clock) of the fill's answer: the audit sends that
user's own request upstream too, in the background, while the user is
answered from the entry at once.  The comparison counts only when the two
fetches really were that close (:meth:`Pairing.same_moment`: the audit's
answer came within the filler's own fetch time plus ``window`` of the fill);
otherwise it is inconclusive and the next window tries again.  A fetch a
long time after the fill would compare a list with a later version of
itself: a timing difference, not a view difference.  The second user's
token is used only by that background fetch, started by its own request,
and dropped when it ends (as a stale-while-revalidate refresh does); the
pairing keeps the filler's user *name*, never a credential.  The
alternatives were worse: storing the filler's token (never: tokens are not
stored in clear), or holding the first user's request until a second user
comes (it would delay an answer, and keep a token beyond its request).

**Compared without** ``meta`` (``meta.client`` names the requester) **nor
the top-level** ``last_update`` (slurmctld's ``time(NULL)`` when it packed
the answer, ``_pack_init_job_info`` in job_mgr.c: the response's clock, the
same for every user, different a second later).  Everything else must be
equal, statuses included (``PrivateData=nodes`` refuses a non-operator with
500).  An answer that says nothing about the view (the credential refused,
slurmrestd busy or failing, not JSON, too big) is inconclusive.

**Jobs change between any two fetches on a busy cluster**: a difference
on a list slurmctld can revalidate (``update_time``: jobs, nodes,
partitions, reservations) counts only if slurmctld, asked once more with
``update_time`` set to just before the fill, says nothing changed since
(the mechanism asks; :attr:`Verdict.INCONCLUSIVE` otherwise).  Then no
record changed between the two fetches, and the difference is the view's.

**A difference is re-checked before anything is demoted**: the route turns
*suspect*, the very next fill of it is audited (whatever the sampling says)
with a new pair, and only a second difference in a row demotes it; a
matching pair clears the suspicion.  So a change that lands between the two
fetches of one pair (a job starting in that second) never demotes a route
on its own.

**Sampling**: ``rate`` is the fraction of a route's fills (TTL windows)
audited; a route is audited at its first fill, then once every
``ceil(1/rate)`` fills, counted only when a comparison is made (a window
without a partner costs nothing and keeps the audit armed for the next
fill).  At most one comparison per route per TTL window: the cost to
slurmctld is one extra request per route per ``ceil(1/rate)`` windows.

**The bound** (docs/OPERATIONS.md, "Shared views: the audit"): with
``N = ceil(1/rate)``, a wrong setting is caught at the latest at the
``N + 1``-th *paired* window of the route after it went wrong (a window whose
fill is followed within ``window`` seconds by another user): ``N`` to reach
the sampled one, one for the re-check.  Wrong from the start: at the second
paired window.  So the shared answers other users get before the route is
demoted are at most those of ``N + 1`` paired windows (``2`` from the start)
plus those of unpaired windows between them, each window at most ``TTL``
seconds of that route's requests.  :func:`windows_bound` says it in code.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

import orjson

DEFAULT_RATE = 0.1
"""Audit one TTL window in ten per route."""
DEFAULT_WINDOW = 1.0
"""Seconds within which a second user's fetch counts as the same moment."""
IGNORED_MEMBERS = ("meta", "last_update")
"""Top-level members that differ per request or per second, not per user."""
MAX_OWNERS = 4096
"""Shared keys whose last whole fetch's user is remembered (a revalidated
entry's body is still that user's view)."""
NOT_A_VIEW = frozenset({401, 403, 408, 429, 502, 503, 504})
"""Statuses that say something of the credential or of slurmrestd's load,
nothing of what this user may see: inconclusive."""


class Verdict(Enum):
    SAME = "same"
    DIFFERENT = "different"
    INCONCLUSIVE = "inconclusive"


def every(rate: float) -> int:
    """Fills per audit for ``rate`` (0: never)."""
    if rate <= 0:
        return 0
    return max(1, math.ceil(1 / min(rate, 1.0) - 1e-9))


def windows_bound(rate: float, *, from_start: bool) -> int:
    """Paired windows of a route served before a wrong setting demotes it."""
    return 2 if from_start else every(rate) + 1


@dataclass(frozen=True, slots=True)
class Pairing:
    """A sampled fill waiting for a second user: what the comparison needs
    of it (the body is the entry's, already in memory; no credential)."""

    route: str
    key: bytes
    filler: str
    """The user whose view the body is (:attr:`cacheproxy.core.identity.Identity.user`;
    empty: not known, any user pairs)."""
    origin: float
    """When the filler's request was sent."""
    stored_at: float
    """When its answer was complete and stored."""
    status: int
    body: bytes
    window: float

    def partner(self, key: bytes, user: str, now: float) -> bool:
        """Whether this request (another user's, for the same entry, now)
        makes the pair."""
        return key == self.key and user != self.filler and now - self.stored_at <= self.window

    def same_moment(self, answered_at: float) -> bool:
        """Whether the audit's fetch, answered at ``answered_at``, was close
        enough to the fill to compare (it may have waited for an upstream
        slot): within the filler's own fetch time plus the window."""
        return answered_at - self.stored_at <= self.window + (self.stored_at - self.origin)


def _view(body: bytes) -> object:
    value = orjson.loads(body)
    if isinstance(value, dict):
        for name in IGNORED_MEMBERS:
            value.pop(name, None)
    return value


def compare(status_a: int, body_a: bytes, status_b: int, body_b: bytes | None) -> Verdict:
    """Two users' answers to the same request at the same moment
    (``body_b`` None: not read whole, e.g. too big)."""
    if status_b in NOT_A_VIEW or status_a in NOT_A_VIEW or body_b is None:
        return Verdict.INCONCLUSIVE
    if status_a != status_b:
        return Verdict.DIFFERENT
    if body_a == body_b:
        return Verdict.SAME
    try:
        a, b = _view(body_a), _view(body_b)
    except orjson.JSONDecodeError:
        return Verdict.INCONCLUSIVE
    return Verdict.SAME if a == b else Verdict.DIFFERENT


@dataclass
class AuditBook:
    """Which routes are due, armed or suspect (the audit's whole state)."""

    rate: float = DEFAULT_RATE
    window: float = DEFAULT_WINDOW
    fills: dict[str, int] = field(default_factory=dict)
    """route -> fills since its last comparison (absent: never compared)."""
    suspect: set[str] = field(default_factory=set)
    """Routes whose last comparison differed: the next fill re-checks."""
    armed: dict[str, Pairing] = field(default_factory=dict)
    """route -> the sampled fill waiting for a second user."""
    owners: OrderedDict[bytes, str] = field(default_factory=OrderedDict)
    """key -> the user of its last whole fetch (bounded: :data:`MAX_OWNERS`)."""

    @property
    def enabled(self) -> bool:
        return every(self.rate) > 0

    def filled(
        self,
        route: str,
        key: bytes,
        filler: str | None,
        origin: float,
        stored_at: float,
        status: int,
        body: bytes,
    ) -> bool:
        """A shared entry of ``route`` was filled from an answer of this
        moment (``filler`` None: revalidated, the body is its last whole
        fetch's user's view); True when it is armed."""
        n = every(self.rate)
        if n == 0:
            return False
        owners = self.owners
        if filler is None:
            filler = owners.get(key, "")
        else:
            owners[key] = filler
            owners.move_to_end(key)
            if len(owners) > MAX_OWNERS:
                owners.popitem(last=False)
        count = self.fills.get(route, n - 1) + 1
        self.fills[route] = count
        if count < n and route not in self.suspect:
            self.armed.pop(route, None)  # (an older fill's pairing is past its window)
            return False
        self.armed[route] = Pairing(
            route, key, filler, origin, stored_at, status, body, self.window
        )
        return True

    def take(self, route: str, key: bytes, user: str, now: float) -> Pairing | None:
        """The pairing this request completes, if any (disarmed: one
        comparison per armed fill); an expired one is dropped."""
        pairing = self.armed.get(route)
        if pairing is None:
            return None
        if now - pairing.stored_at > pairing.window:
            del self.armed[route]
            return None
        if not pairing.partner(key, user, now):
            return None
        del self.armed[route]
        return pairing

    def expire(self, now: float) -> None:
        """Drop pairings past their window."""
        for route, pairing in list(self.armed.items()):
            if now - pairing.stored_at > pairing.window:
                del self.armed[route]

    def decided(self, route: str, verdict: Verdict) -> bool:
        """Record a comparison's verdict; True: demote the route."""
        if verdict is Verdict.INCONCLUSIVE:
            return False  # (the sampling count stands: the next fill tries again)
        self.fills[route] = 0
        if verdict is Verdict.SAME:
            self.suspect.discard(route)
            return False
        if route in self.suspect:
            self.suspect.discard(route)
            return True
        self.suspect.add(route)
        return False
