"""Who is asking, as a cache key part, and a keyed hash of their credential.

The proxy cannot verify a token itself, so it only ever trusts a credential
that slurmrestd has accepted; this module says which user slurmrestd acts as
*if* it accepts the credential, and turns the credential into a keyed hash,
so no token is ever kept or logged in clear.

Everything is read from the request as forwarded
(:class:`cacheproxy.core.headers.RequestView`: ``Connection``-named headers are
gone), as slurmrestd's ``rest_auth/jwt`` reads it.  Read in SchedMD's source,
src/slurmrestd/plugins/auth/jwt/jwt.c (22.05.8, 23.11.0, 24.05.0, 25.05.0,
25.11.0) and src/plugins/auth/jwt/auth_jwt.c (25.11.0):

* 22.05: ``X-SLURM-USER-NAME`` and ``X-SLURM-USER-TOKEN`` are both required
  (a header that is present counts, even empty); ``Authorization`` is ignored.
* 23.11 and later: a token comes from ``X-SLURM-USER-TOKEN`` or from an
  ``Authorization`` value starting with exactly ``Bearer `` (case and the one
  space matter; the token is the rest, unstripped); both headers together are
  refused as ambiguous, whatever the ``Authorization`` scheme; the name is
  optional.
* slurmctld (auth_jwt.c) acts as the name when one is given, which only a
  token of root or SlurmUser may make differ from the token's owner; with no
  name, as the owner: the ``sun`` claim, else ``username``.  An empty name is
  no user and is refused.
* Each header is the first of its name (``find_http_header``).

So the credential hash covers the presence and exact value of the three
headers, as forwarded: two requests share an acceptance record only if
slurmrestd sees the very same credential.  The user part of the key is the
name when one is forwarded, else the token owner's claim, else the credential
itself.  Shapes that no release accepts (no token, an empty token, a
non-``Bearer`` ``Authorization`` alone, two tokens without a name, a
repeated credential header) get no identity: they are forwarded uncached and
slurmrestd answers them.

The keyed hash is BLAKE2b in its keyed (MAC) mode rather than HMAC-SHA256:
the same guarantee (a PRF under a secret key) at a third of the cost, which
matters because it runs on every cache hit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import jwt

from cacheproxy.core import usertag
from cacheproxy.core.headers import AUTHORIZATION, USER_NAME, USER_TOKEN, RequestView
from cacheproxy.core.memo import ByteMemo
from cacheproxy.upstream.base import Headers

__all__ = ["AUTHORIZATION", "USER_NAME", "USER_TOKEN", "Identity", "IdentityResolver"]

KNOWN_MAX_BYTES = 16 * 1024 * 1024
"""Bound of the identity memo (credential hash -> identity), in bytes."""
BEARER = b"Bearer "
"""slurmrestd's ``HTTP_HEADER_AUTH_BEARER``, compared case-sensitively."""


@dataclass(slots=True, frozen=True)
class Identity:
    kind: str
    """``token`` (X-SLURM-USER-TOKEN) or ``bearer`` (Authorization)."""
    user: str
    """The user the cache keys on, the one slurmrestd acts as once it
    accepted the credential: ``name:`` the user-name header, else ``sun:``
    the token's owner claim, else ``cred:`` the credential hash."""
    credential: bytes
    """Keyed hash of everything slurmrestd authenticates: the presence and
    value of the name, token and Authorization headers, as forwarded."""
    expires_at: float | None
    """The JWT's ``exp`` claim, when the token is a JWT that has one."""


def jwt_claims(token: bytes) -> dict[str, object] | None:
    """The unverified payload of a JWT, or None (PyJWT reads it: header and
    payload must both decode, as for slurmrestd's libjwt).

    Unverified is enough: it is used only to shorten trust (``exp``) and to name
    a user whose credential must still be accepted by slurmrestd.  (The local
    JWT check, :mod:`cacheproxy.http.jwtcheck`, is what verifies.)
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


def _owner(claims: dict[str, object]) -> str | None:
    """The user a JWT names, as auth_jwt.c picks it: ``sun``, else ``username``."""
    for claim in ("sun", "username"):
        value = claims.get(claim)
        if isinstance(value, str):
            return value or None
    return None


_CREDENTIAL_TEXT = b"cred-2,"
"""What the hashed text of a credential starts with (its format's version);
the presence and value of each of the three headers follow."""


_PREFIXES = [b"+%d:" % n for n in range(4096)]
"""The prefixes of header values up to 4 KiB, made once: formatting three
per request was a fiftieth of an in-process hit."""


def _part(value: bytes | None) -> bytes:
    """A header's part of the hashed text: ``-`` when absent, else
    ``+<length>:<value>``."""
    if value is None:
        return b"-"
    n = len(value)
    return (_PREFIXES[n] if n < 4096 else b"+%d:" % n) + value


class IdentityResolver:
    """Extracts identities; holds the HMAC key and a memo of identities,
    bounded in bytes (:mod:`cacheproxy.core.memo`)."""

    def __init__(self, hmac_key: bytes, *, memo_bytes: int = KNOWN_MAX_BYTES) -> None:
        # BLAKE2b takes keys up to 64 bytes: derive a fixed-size one.
        self._key = hashlib.blake2b(hmac_key, person=b"cacheproxy-key").digest()
        # The key is absorbed once, with the text's fixed start: BLAKE2 keeps
        # the last full block until more data comes, so absorbing only the
        # key would leave its compression to every request's copy.
        self._hasher = hashlib.blake2b(key=self._key, digest_size=32)
        self._hasher.update(_CREDENTIAL_TEXT)
        # credential hash -> Identity; keyed by the hash, never by the token.
        self._known: ByteMemo[bytes, Identity] = ByteMemo(memo_bytes)

    def user_tag(self, name: str) -> str:
        """The tag of every entry cached for user ``name``, keyed like
        credentials so replicas agree (:mod:`cacheproxy.core.usertag`)."""
        return usertag.user_tag(self._key, name)

    def resolve(self, headers: Headers | RequestView) -> Identity | None:
        """The request's identity; None when it carries no credential that
        slurmrestd could accept (such a request is never answered from the
        cache).  Read from the headers as forwarded (see the module doc)."""
        view = headers if isinstance(headers, RequestView) else RequestView(headers)
        if view.repeated:
            return None  # which one counts is not for the cache to guess
        return self.resolve_values(view.name, view.token, view.auth)

    def resolve_values(
        self, name: bytes | None, token: bytes | None, auth: bytes | None
    ) -> Identity | None:
        """As :meth:`resolve`, from the forwarded headers' values (None:
        absent; the hit path scans the headers once for everything)."""
        credential = self.credential(name, token, auth)
        if credential is None:
            return None
        return self.identity(credential, name, token, auth)

    def credential(
        self, name: bytes | None, token: bytes | None, auth: bytes | None
    ) -> bytes | None:
        """The keyed hash of the credential these header values make, or None
        when they are no shape slurmrestd could accept (see the module doc).
        (Apart from :meth:`identity` so the planner can memoise a request's
        plan under the hash: one memo read per hit.)"""
        if name == b"":
            return None  # no user has an empty name: refused by every release
        if token is not None:
            if not token or (auth is not None and name is None):
                return None  # an empty token; or two tokens and no name
        elif auth is None or not auth.startswith(BEARER) or len(auth) <= len(BEARER):
            return None
        hasher = self._hasher.copy()  # (holds the key and _CREDENTIAL_TEXT)
        hasher.update(_part(name) + _part(token) + _part(auth))
        return hasher.digest()

    def identity(
        self, credential: bytes, name: bytes | None, token: bytes | None, auth: bytes | None
    ) -> Identity:
        """The identity of a credential :meth:`credential` hashed (from the
        same header values)."""
        known = self._known.get(credential)
        if known is not None:
            return known
        if token is not None:
            kind = "token"
            jwt_token = token
        else:  # a Bearer credential (checked by credential())
            assert auth is not None
            kind = "bearer"
            jwt_token = auth[len(BEARER) :]
        claims = jwt_claims(jwt_token) or {}
        exp = claims.get("exp")
        owner = _owner(claims)
        if name is not None:
            user = "name:" + name.decode("latin-1")
        elif owner is not None:
            user = "sun:" + owner
        else:
            user = "cred:" + credential.hex()
        identity = Identity(
            kind=kind,
            user=user,
            credential=credential,
            expires_at=float(exp)
            if isinstance(exp, int | float) and not isinstance(exp, bool)
            else None,
        )
        self._known.put(credential, identity, 2 * len(user) + len(credential) + 100)
        return identity
