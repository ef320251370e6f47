"""Side-effect-free cache decisions: may this response be stored, did
slurmrestd accept or refuse the credential, how long may it be trusted.

Kept apart from the mechanism (stores, HTTP) so each rule of the brief is one
small function with its own tests.
"""

from __future__ import annotations

import re

from cacheproxy.identity import Identity
from cacheproxy.request import ProxyRequest
from cacheproxy.upstream.base import Headers

DEFAULT_AUTH_TTL = 60.0
DEFAULT_MAX_ENTRY_BYTES = 32 * 1024 * 1024

# Statuses slurmrestd uses for a refused credential: 401 (missing), 511 (bad or
# expired JWT in 25.x) and, in 22.05, a 500 with error_number -1 / "Unspecified
# error" for a wrong token or a name/token mismatch.
AUTH_REFUSED = frozenset({401, 403, 511})

_JSON_ERRORS_KEY = re.compile(rb'"errors"\s*:\s*')
_JSON_EMPTY_LIST = re.compile(rb"\[\s*\]")
_YAML_EMPTY_ERRORS = re.compile(rb"^errors:\s*\[\s*\]\s*$", re.MULTILINE)
_YAML_ANY_ERRORS = re.compile(rb"^errors:", re.MULTILINE)
_AUTH_500 = re.compile(rb'"error_number"\s*:\s*-1\b|[Aa]uthentication failure|Unspecified error')


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


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


def request_storable(request: ProxyRequest) -> bool:
    """``update_time`` answers are deltas (or bare 304s), never the full list."""
    return not request.has_query("update_time")


def response_storable(status: int, headers: Headers, body: bytes, max_entry_bytes: int) -> bool:
    if status != 200 or len(body) > max_entry_bytes:
        return False
    cc = header_value(headers, b"cache-control")
    if cc is not None and (b"no-store" in cc.lower() or b"private" in cc.lower()):
        return False
    if header_value(headers, b"set-cookie") is not None:
        return False
    return errors_empty(body, header_value(headers, b"content-type"))


def credential_refused(status: int, body: bytes) -> bool:
    """Did slurmrestd refuse the credential (so any acceptance is revoked)?"""
    if status in AUTH_REFUSED:
        return True
    return status == 500 and _AUTH_500.search(body[:4096]) is not None


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
