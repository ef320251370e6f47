"""Who is asking, as a cache key part, and a keyed hash of their credential.

slurmrestd authenticates ``X-SLURM-USER-NAME`` + ``X-SLURM-USER-TOKEN`` (all
versions) or ``Authorization: Bearer`` (23.11+).  The proxy cannot verify a
token itself, so it only ever trusts a credential that slurmrestd has
accepted; this module just says which user a request claims to be and turns
the credential into a keyed hash, so no token is ever kept or logged in clear.

The keyed hash is BLAKE2b in its keyed (MAC) mode rather than HMAC-SHA256:
the same guarantee (a PRF under a secret key) at a third of the cost, which
matters because it runs on every cache hit.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import orjson

from cacheproxy import usertag
from cacheproxy.upstream.base import Headers

USER_NAME = b"x-slurm-user-name"
USER_TOKEN = b"x-slurm-user-token"
AUTHORIZATION = b"authorization"

_KNOWN_MAX = 65_536


@dataclass(slots=True, frozen=True)
class Identity:
    kind: str
    """``token`` (X-SLURM-USER-TOKEN) or ``bearer`` (Authorization)."""
    user: str
    """The user the cache keys on: the user-name header, else the JWT's
    ``sun`` claim, else a hash of the token (one entry set per token)."""
    credential: bytes
    """Keyed hash of everything slurmrestd authenticates: kind, name, token."""
    expires_at: float | None
    """The JWT's ``exp`` claim, when the token is a JWT that has one."""


def jwt_claims(token: bytes) -> dict[str, object] | None:
    """The unverified payload of a JWT, or None.

    Unverified is enough: it is used only to shorten trust (``exp``) and to name
    a user whose credential must still be accepted by slurmrestd.
    """
    parts = token.split(b".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


class IdentityResolver:
    """Extracts identities; holds the HMAC key and a memo of token expiries."""

    def __init__(self, hmac_key: bytes) -> None:
        # BLAKE2b takes keys up to 64 bytes: derive a fixed-size one.
        self._key = hashlib.blake2b(hmac_key, person=b"cacheproxy-key").digest()
        self._hasher = hashlib.blake2b(key=self._key, digest_size=32)
        # credential hash -> Identity; keyed by the hash, never by the token.
        self._known: dict[bytes, Identity] = {}

    def user_tag(self, name: str) -> str:
        """The tag of every entry cached for user ``name``, keyed like
        credentials so replicas agree (:mod:`cacheproxy.usertag`)."""
        return usertag.user_tag(self._key, name)

    def resolve(self, headers: Headers) -> Identity | None:
        """The request's identity; None when it carries no usable credential
        (such a request is never answered from the cache)."""
        name: bytes | None = None
        token: bytes | None = None
        auth: bytes | None = None
        for k, v in headers:
            if k == USER_NAME:
                if name is not None:
                    return None  # repeated: ambiguous, never cache
                name = v
            elif k == USER_TOKEN:
                if token is not None:
                    return None
                token = v
            elif k == AUTHORIZATION:
                if auth is not None:
                    return None
                auth = v
        return self.resolve_values(name, token, auth)

    def resolve_values(
        self, name: bytes | None, token: bytes | None, auth: bytes | None
    ) -> Identity | None:
        """As :meth:`resolve`, from header values already picked out (the hit
        path scans the headers once for everything it needs)."""
        if token:
            kind = b"token"
        elif auth is not None and auth[:7].lower() == b"bearer " and auth[7:].strip():
            kind = b"bearer"
            token = auth[7:].strip()
        else:
            return None
        assert token is not None
        user_part = name if name is not None else b"\x00none"
        hasher = self._hasher.copy()  # the key is absorbed once, not per request
        hasher.update(
            b"%d:%s,%d:%s,%d:%s," % (len(kind), kind, len(user_part), user_part, len(token), token)
        )
        credential = hasher.digest()
        known = self._known.get(credential)
        if known is not None:
            return known
        claims = jwt_claims(token) or {}
        exp = claims.get("exp")
        sun = claims.get("sun")
        if name is not None:
            user = "name:" + name.decode("latin-1")
        elif isinstance(sun, str):
            user = "sun:" + sun
        else:
            user = "cred:" + credential.hex()
        identity = Identity(
            kind=kind.decode(),
            user=user,
            credential=credential,
            expires_at=float(exp)
            if isinstance(exp, int | float) and not isinstance(exp, bool)
            else None,
        )
        if len(self._known) >= _KNOWN_MAX:
            self._known.clear()
        self._known[credential] = identity
        return identity
