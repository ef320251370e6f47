"""Side-effect-free cache decisions: may this response be stored, did
slurmrestd accept or refuse the credential, how long may it be trusted, how
long is an expired entry kept and when may it stand in for upstream.

Kept apart from the mechanism (stores, HTTP) so each rule of the brief is one
small function with its own tests.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import orjson

from cacheproxy.core.identity import Identity
from cacheproxy.core.rules import COST_CLASSES, Match, default_cost
from cacheproxy.store.base import Entry
from cacheproxy.upstream.base import Headers

DEFAULT_AUTH_TTL = 60.0
DEFAULT_MAX_ENTRY_BYTES = 256 * 1024 * 1024

# Statuses slurmrestd uses for a refused credential: 401 (missing), 511 (bad or
# expired JWT in 25.x) and, in 22.05, a 500 with error_number -1 / "Unspecified
# error" for a wrong token or a name/token mismatch.
AUTH_REFUSED = frozenset({401, 403, 511})

_JSON_ERRORS_KEY = re.compile(rb'"errors"\s*:\s*')
_JSON_EMPTY_LIST = re.compile(rb"\[\s*\]")
_YAML_EMPTY_ERRORS = re.compile(rb"^errors:\s*\[\s*\]\s*$", re.MULTILINE)
_YAML_ANY_ERRORS = re.compile(rb"^errors:", re.MULTILINE)
_AUTH_IN_ERRORS = re.compile(rb'[Aa]uthentication error|"error_number"\s*:\s*1007\b')
_ERROR_1007 = re.compile(rb'"error_number"\s*:\s*1007\b')
_AUTH_500 = re.compile(rb'"error_number"\s*:\s*-1\b|[Aa]uthentication failure|Unspecified error')


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def content_length(headers: Headers) -> int | None:
    """The declared body length: None when absent or not plain digits (the
    one parse of ``Content-Length`` every step shares)."""
    raw = header_value(headers, b"content-length")
    return int(raw) if raw is not None and raw.isdigit() else None


def errors_empty(body: bytes, content_type: bytes | None) -> bool:
    """True only when every ``errors`` array in the body is provably empty.

    Scans bytes instead of parsing: a 50 MB ``/jobs`` body is not decoded just
    to decide whether to keep it.  Anything it cannot prove empty is not
    stored.
    """
    ct = (content_type or b"").split(b";", 1)[0].strip().lower()
    if ct == b"application/json" or ct.endswith(b"+json"):
        return all(_JSON_EMPTY_LIST.match(body, m.end()) for m in _JSON_ERRORS_KEY.finditer(body))
    if b"yaml" in ct:
        total = len(_YAML_ANY_ERRORS.findall(body))
        return total == len(_YAML_EMPTY_ERRORS.findall(body))
    return False


BENIGN_ERRORS = frozenset({9003})
"""slurmdbd's "Nothing found with query": every empty slurmdb list carries it
(and /slurmdb/config on a cluster without wckeys).  It reports no failure."""


def errors_benign(body: bytes, content_type: bytes | None) -> bool:
    """True when the body reports no failure: ``errors`` empty, or holding only
    :data:`BENIGN_ERRORS` (then the body is parsed: a rare, small case)."""
    if errors_empty(body, content_type):
        return True
    ct = (content_type or b"").split(b";", 1)[0].strip().lower()
    if ct != b"application/json":
        return False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    errs = doc.get("errors") if isinstance(doc, dict) else None
    return isinstance(errs, list) and all(
        isinstance(e, dict) and e.get("error_number") in BENIGN_ERRORS for e in errs
    )


def response_storable(status: int, headers: Headers, body: bytes, max_entry_bytes: int) -> bool:
    if status != 200 or len(body) > max_entry_bytes:
        return False
    cc = header_value(headers, b"cache-control")
    if cc is not None and (b"no-store" in cc.lower() or b"private" in cc.lower()):
        return False
    if header_value(headers, b"set-cookie") is not None:
        return False
    return errors_benign(body, header_value(headers, b"content-type"))


def credential_refused(status: int, body: bytes) -> bool:
    """Did slurmrestd refuse the credential (so any acceptance is revoked)?

    slurmdbd calls in 22.05 answer a bad token with a 200 whose ``errors``
    holds "Protocol authentication error" (1007): that counts too.
    """
    if status in AUTH_REFUSED:
        return True
    if status == 500:
        return _AUTH_500.search(body[:4096]) is not None
    return 200 <= status < 300 and _auth_error_in(body)


def _auth_error_in(body: bytes) -> bool:
    """Whether a 2xx body reports an authentication error.

    Every fetch asks this of its whole body (a v0.0.4x ``/jobs`` is about a
    megabyte per 300 jobs), and :data:`_AUTH_IN_ERRORS`, an alternation whose
    branches start with a character class and a quote, is tried at nearly
    every position of pretty-printed JSON: profiled under the per-user
    benchmark, that search was most of the proxy's CPU.  Each branch has a
    literal that a substring test (``in``, at memory speed) finds first; the
    pattern itself then runs only on the rare body that holds one.
    """
    if b"uthentication error" in body and _AUTH_IN_ERRORS.search(body) is not None:
        return True
    return b'"error_number"' in body and _ERROR_1007.search(body) is not None


REFUSAL_BODY_MAX = 64 * 1024
"""A refusal's body is small (an ``errors`` list); a larger 2xx or 500 is
judged as not refused, which for a write means: invalidate."""


def refusal_needs_body(status: int) -> bool:
    """Whether :func:`credential_refused` reads the body for ``status``."""
    return status == 500 or 200 <= status < 300


def write_refused(status: int, headers: Headers, body: bytes | None) -> bool:
    """Did slurmrestd refuse a write before doing anything?  Then it
    invalidates nothing.

    Only two kinds of answer say so: a refused credential
    (:func:`credential_refused`: 401, 403, 511, 22.05's 500 "Unspecified
    error", slurmdbd's 200 with error 1007), and a 4xx in ``text/plain``,
    which slurmrestd sends only when it rejects the request before any
    handler runs (unknown path 404, method 405, unknown ``Accept`` 415,
    unparsable path, query or body 400, 401; ``_operations_router_reject``
    in src/slurmrestd/operations.c).  Every other answer, errors included,
    may follow a change (a handler can fail half-way through a batch), so
    it invalidates.  ``body`` is None when it was not read (too large, or
    not needed for ``status``): then only the status and headers decide.
    """
    if status in AUTH_REFUSED:
        return True
    if 400 <= status < 500:
        ct = header_value(headers, b"content-type") or b""
        return ct.split(b";", 1)[0].strip().lower() == b"text/plain"
    return body is not None and credential_refused(status, body)


def credential_accepted(status: int, body: bytes | None, content_type: bytes | None) -> bool:
    """Did slurmrestd accept the credential?  Only a 2xx whose whole body was
    seen and reports no failure: slurmdbd says "authentication error" in a 200,
    and some answers (the OpenAPI documents in 22.05) never check the token."""
    return 200 <= status < 300 and body is not None and errors_benign(body, content_type)


def accepted_until(identity: Identity, now: float, auth_ttl: float) -> float:
    """Trust an accepted credential for ``auth_ttl``, never past its JWT ``exp``."""
    until = now + auth_ttl
    if identity.expires_at is not None:
        until = min(until, identity.expires_at)
    return until


_NO_JOB_CHANGES = re.compile(rb'"jobs"\s*:\s*\[\s*\]')


def no_changes(body: bytes) -> bool:
    """slurmrestd 25.x's answer to ``/jobs?update_time=`` when nothing
    changed: a 200 with an empty list and a "No job changes" warning."""
    return b"No job changes" in body and _NO_JOB_CHANGES.search(body) is not None


REVALIDATE_KEEP_TTLS = 12
"""Expired revalidatable entries are kept this many TTLs (a minute for /jobs)."""


def keep_after_expiry(match: Match) -> float:
    """How long an expired entry is kept: to serve it stale on upstream
    errors, or to revalidate it with ``update_time`` instead of a full fetch."""
    rule = match.rule
    if rule is None:
        return 0.0
    keep = max(rule.stale_if_error, rule.stale_while_revalidate)
    if rule.revalidate is not None:
        keep = max(keep, REVALIDATE_KEEP_TTLS * rule.ttl)
    return keep


STALE_ON_STATUS = frozenset({502, 503, 504})
"""Upstream answers that let a stale entry stand in (``stale_if_error``)."""

_HARD_DROP = re.compile(rb'"error_number"\s*:\s*1805\b')


def controller_dropped(status: int, body: bytes) -> bool:
    """slurmctld's RPC queue dropped the request (``HARD_DROP``, 24.05 on):
    slurmrestd answers 500 with error 1805 "Rate limit exceeded, please retry
    later".  Like the 502 "please retry momentarily", the controller asks for
    less: a stale entry may stand in.  A 500 is also how 22.05 refuses a
    token, so only that error number counts (never stored: not a 200)."""
    return status == 500 and b"1805" in body and _HARD_DROP.search(body[:4096]) is not None


def stale_fallback(
    entry: Entry | None,
    accepted: bool,
    match: Match,
    generations: Sequence[int],
    now: float,
) -> Entry | None:
    """An expired entry that may stand in for upstream's answer, or None.

    Only while the rule's ``stale_if_error`` (or ``stale_while_revalidate``)
    window lasts, only to a credential slurmrestd accepted, and only if no
    write invalidated it (its tag generations are unchanged): stale data
    must never undo read-your-writes.
    """
    rule = match.rule
    if (
        entry is None
        or rule is None
        or not accepted
        or not entry.is_valid(match.tags, tuple(generations))
    ):
        return None
    window = max(rule.stale_if_error, rule.stale_while_revalidate)
    if window <= 0 or now >= entry.stored_at + entry.ttl + window:
        return None
    return entry


def upstream_cost(match: Match) -> int:
    """What the request costs in the fair upstream queue
    (:data:`~cacheproxy.core.rules.COST_CLASSES`): its rule's class; a
    request no rule knows is classed by its family (a slurmdbd read costs
    the most, anything else is taken for a list)."""
    rule = match.rule
    if rule is not None:
        return COST_CLASSES[rule.cost]
    return COST_CLASSES[default_cost((match.family,))]
