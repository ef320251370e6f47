"""Optional local JWT verification: a step of the pipeline.

With the cluster's ``jwt_hs256.key`` (the file slurmctld's
``AuthAltParameters=jwt_key=`` names) or a JWKS file (``jwks=``, RS256), the
proxy can refuse a forged or expired token itself: slurmrestd, and the
slurmctld RPC behind its authentication, never see it.  A token that verifies
is *not* trusted for anything more: it still goes to slurmrestd, which decides
what the user may do (and whose acceptance alone lets cached data be served).

Refusals look exactly like slurmrestd's (``401 text/plain`` "Authentication
failure"), so the outer :class:`~cacheproxy.http.guard.AuthGuard` counts them too.

Verification results are memoised under an HMAC of the token, never the token
itself, and the expiry is re-checked on every request.  A few seconds of
leeway on ``exp`` favour passing a just-expired token upstream (which refuses
it) over refusing one slurmctld, with a slightly different clock, would
still accept: the proxy must not be the reason a valid request fails.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jwt

from cacheproxy.core.identity import AUTHORIZATION, USER_TOKEN
from cacheproxy.http.pipeline import BaseStep, Exchange
from cacheproxy.http.respond import Response, auth_failure
from cacheproxy.ops.paths import OWN_PREFIX
from cacheproxy.settings import Settings
from cacheproxy.stats import Stats
from cacheproxy.upstream.base import Headers

log = logging.getLogger("cacheproxy.jwtcheck")

_MEMO_MAX = 65_536
_INVALID = float("-inf")
_MIN_HS256_KEY = 32


class JwtConfigError(ValueError):
    """The key or JWKS file cannot be used."""


def load_hs256_key(path: str) -> bytes:
    """The raw key bytes, as slurmctld reads ``jwt_hs256.key``."""
    try:
        key = Path(path).read_bytes()
    except OSError as exc:
        raise JwtConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if not key:
        raise JwtConfigError(f"{path}: empty key")
    if len(key) < _MIN_HS256_KEY:
        log.warning("%s: HS256 key shorter than %d bytes", path, _MIN_HS256_KEY)
    return key


def load_jwks(path: str) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_json(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise JwtConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (jwt.PyJWTError, ValueError) as exc:
        raise JwtConfigError(f"{path}: not a usable JWKS: {exc}") from None


def request_tokens(headers: Headers) -> list[bytes]:
    """Every token a request carries (slurmrestd's header and Bearer)."""
    out = []
    for k, v in headers:
        if k == USER_TOKEN:
            out.append(v)
        elif k == AUTHORIZATION and v[:7].lower() == b"bearer ":
            out.append(v[7:].strip())
    return out


class TokenVerifier:
    """Checks signatures (HS256 key and/or RS256 JWKS) and expiry."""

    def __init__(
        self,
        *,
        hmac_key: bytes,
        hs256_key: bytes | None = None,
        jwks: jwt.PyJWKSet | None = None,
        leeway: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if hs256_key is None and jwks is None:
            raise JwtConfigError("local JWT verification needs an HS256 key or a JWKS")
        self._hmac_key = hmac_key
        self._hs256 = hs256_key
        self._jwks = jwks
        self.leeway = leeway
        self._clock = clock
        self._memo: dict[bytes, float] = {}

    def valid(self, token: bytes) -> bool:
        """True when ``token`` is signed by a configured key and not expired."""
        return self._clock() < self._exp(token) + self.leeway

    def _exp(self, token: bytes) -> float:
        digest = hmac.new(self._hmac_key, b"jwt\0" + token, hashlib.sha256).digest()
        exp = self._memo.get(digest)
        if exp is None:
            exp = self._verify(token)
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[digest] = exp
        return exp

    def expiry(self, token: bytes) -> float | None:
        """The ``exp`` of a token whose signature verifies (no leeway: the
        caller compares it with its clock); None when it does not verify."""
        exp = self._exp(token)
        return None if exp == _INVALID else exp

    def proves(self, headers: Headers) -> bool:
        """True when the request carries a token and every token it carries
        verifies: the credential proves itself without asking slurmctld
        (the guard lets such a request through a block)."""
        tokens = request_tokens(headers)
        return bool(tokens) and all(self.valid(t) for t in tokens)

    def _verify(self, token: bytes) -> float:
        """The token's ``exp`` when its signature verifies, else -inf."""
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            key: object
            if alg == "HS256" and self._hs256 is not None:
                key = self._hs256
            elif alg == "RS256" and self._jwks is not None:
                key = self._jwks_key(header.get("kid"))
            else:
                return _INVALID
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                claims = jwt.decode(
                    token,
                    key,  # type: ignore[arg-type]
                    algorithms=[alg],
                    options={
                        "require": ["exp"],
                        "verify_exp": False,  # checked per request, against the memo
                        "verify_aud": False,  # slurmctld does not check audiences
                        "verify_iat": False,
                        "verify_nbf": False,
                    },
                )
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            return _INVALID
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return _INVALID
        return float(exp)

    def _jwks_key(self, kid: object) -> object:
        assert self._jwks is not None
        keys = [k for k in self._jwks.keys if k.algorithm_name in ("RS256", None)]
        if kid is not None:
            keys = [k for k in keys if k.key_id == kid]
        elif len(keys) != 1:
            raise KeyError("no kid and not exactly one key")
        if not keys:
            raise KeyError("unknown kid")
        return keys[0].key


class JwtCheck(BaseStep):
    """A step of the pipeline: refuse tokens that fail local verification."""

    def __init__(self, verifier: TokenVerifier, stats: Stats | None = None) -> None:
        self.verifier = verifier
        self.stats = stats if stats is not None else Stats()

    def enter(self, ex: Exchange) -> Response | None:
        scope = ex.scope
        if scope["path"].startswith(OWN_PREFIX):
            return None
        for token in request_tokens(scope["headers"]):
            if not self.verifier.valid(token):
                self.stats.jwt_rejected += 1
                return auth_failure("jwt-refused")
        return None


def token_verifier(s: Settings) -> TokenVerifier | None:
    """The local JWT verifier, or None when not configured (raises
    :class:`~cacheproxy.http.jwtcheck.JwtConfigError` on unusable files)."""
    if not (s.jwt_key or s.jwks_file):
        return None
    return TokenVerifier(
        hmac_key=secrets.token_bytes(32),
        hs256_key=load_hs256_key(s.jwt_key) if s.jwt_key else None,
        jwks=load_jwks(s.jwks_file) if s.jwks_file else None,
        leeway=s.jwt_leeway,
    )
