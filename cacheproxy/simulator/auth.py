"""Who is asking: slurmrestd's ``rest_auth/jwt`` rules, per release, with a
fixed token map.

Read in SchedMD's source (src/slurmrestd/plugins/auth/jwt/jwt.c and
src/slurmrestd/operations.c of 22.05.8, 23.11.0, 24.05.0, 25.05.0 and 25.11.0;
src/plugins/auth/jwt/auth_jwt.c of 25.11.0; ``find_http_header`` in
src/slurmrestd/http.c and src/common/http.c) and measured on 22.05.8
(docs: shared/notes/real-slurmrestd-22.05.md):

* each header is the first of its name (names without case; an empty value
  is present);
* 22.05: name and ``X-SLURM-USER-TOKEN`` both required (either missing: 401
  text/plain "Authentication failure"); ``Authorization`` is ignored;
* 23.11 and later: a token from ``X-SLURM-USER-TOKEN`` or from an
  ``Authorization`` value starting with exactly ``Bearer ``; both headers
  together are refused as ambiguous, as is another scheme or spelling; the
  name is optional (a name alone is refused);
* no credential header at all: 401 "Authentication failure" up to 25.05; from
  25.11 the router answers with the error's own status and text, so 500
  "Authentication does not apply to request" (and a malformed credential
  401 "Invalid authentication credential");
* slurmctld (auth_jwt.c) acts as the name if given, else as the token's
  owner; a name other than the owner's only with a root/SlurmUser token; an
  empty name is no user.  A token it refuses: 500 JSON (-1) in 22.05, 511 JSON
  later (the simulator's and fake's rendering).

Tokens here are opaque strings or JWTs whose signature is "checked" by
looking the whole token up in the map (a forged JWT naming a user is unknown).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Release = Literal["22.05", "23.11", "25.11"]
"""The authentication behaviours: 22.05; 23.11 to 25.05 (one behaviour);
25.11 and later."""
RELEASES: tuple[Release, ...] = ("22.05", "23.11", "25.11")

ROOT_USERS = frozenset({"root", "slurm"})
"""Whose token may name any user (root and SlurmUser)."""


@dataclass(frozen=True)
class Identity:
    user: str


AuthKind = Literal["skip", "invalid", "rejected"]


class AuthError(Exception):
    """Authentication failed; ``kind`` picks the response:

    * ``skip``: no credential header at all (slurmrestd itself refuses);
    * ``invalid``: a malformed credential (slurmrestd itself refuses);
    * ``rejected``: a well-formed token slurmctld does not accept.
    """

    def __init__(self, kind: AuthKind, claimed_user: str = "") -> None:
        super().__init__(kind)
        self.kind = kind
        self.claimed_user = claimed_user

    @property
    def missing(self) -> bool:
        """Refused by slurmrestd itself (no trip to slurmctld)."""
        return self.kind != "rejected"


def refusal(release: Release, kind: AuthKind) -> tuple[int, bytes]:
    """Status and text/plain body of slurmrestd's own refusal (``skip`` or
    ``invalid``) in ``release``."""
    if release != "25.11":
        return 401, b"Authentication failure"
    if kind == "skip":
        return 500, b"Authentication does not apply to request"
    return 401, b"Invalid authentication credential"


def first_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The first value of each header name (lower case), as ``find_http_header``."""
    out: dict[bytes, bytes] = {}
    for k, v in headers:
        out.setdefault(k.lower(), v)
    return out


class Authenticator:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = dict(users)
        self.owner = {token: user for user, token in self.users.items()}

    def authenticate(
        self, headers: Iterable[tuple[bytes, bytes]] | dict[bytes, bytes], release: Release
    ) -> Identity:
        """The user slurmrestd of ``release`` acts as, or :class:`AuthError`.
        ``headers``: the request's header list (or its first values by name)."""
        first = headers if isinstance(headers, dict) else first_headers(headers)
        raw_name = first.get(b"x-slurm-user-name")
        raw_token = first.get(b"x-slurm-user-token")
        raw_auth = first.get(b"authorization")
        name = None if raw_name is None else raw_name.decode("latin-1")
        if release == "22.05":
            if raw_token is None and raw_name is None:
                raise AuthError("skip")
            if raw_token is None or name is None:
                raise AuthError("invalid", name or "")
            token = raw_token.decode("latin-1")
        else:
            if raw_token is None and raw_name is None and raw_auth is None:
                raise AuthError("skip")
            if raw_token is None and raw_auth is None:
                raise AuthError("invalid", name or "")
            if raw_token is not None and raw_auth is not None:
                raise AuthError("invalid", name or "")  # ambiguous
            if raw_token is not None:
                token = raw_token.decode("latin-1")
            else:
                assert raw_auth is not None
                if not raw_auth.startswith(b"Bearer "):
                    raise AuthError("invalid", name or "")
                token = raw_auth[len(b"Bearer ") :].decode("latin-1")
        owner = self.owner.get(token)
        if owner is None:
            raise AuthError("rejected", name or "")
        if name is None:
            return Identity(owner)
        if name == owner or (owner in ROOT_USERS and name != ""):
            return Identity(name)
        raise AuthError("rejected", name)
