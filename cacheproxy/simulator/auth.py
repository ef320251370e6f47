"""Who is asking: slurmrestd's ``rest_auth/jwt`` rules, with a fixed token map.

Two failure kinds behave differently on the wire, as on a real daemon:

* missing user name or token: slurmrestd itself refuses at once (401 text/plain);
* a token slurmctld does not accept (unknown, or another user's): the request
  goes to the controller and fails there (22.05: 500 JSON; 25.x: 511 JSON).

``root``'s token with another user's name acts as that user (root may
impersonate).  From 23.11 on ``Authorization: Bearer`` also works; the user is
then the token's owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Identity:
    user: str


class AuthError(Exception):
    """Authentication failed; ``kind`` picks the response (see module doc)."""

    def __init__(self, kind: Literal["missing", "rejected"], claimed_user: str = "") -> None:
        super().__init__(kind)
        self.kind = kind
        self.claimed_user = claimed_user


class Authenticator:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = dict(users)
        self.owner = {token: user for user, token in self.users.items()}

    def authenticate(self, headers: dict[bytes, bytes], bearer_allowed: bool) -> Identity:
        name = headers.get(b"x-slurm-user-name", b"").decode("latin-1").strip()
        token = headers.get(b"x-slurm-user-token", b"").decode("latin-1").strip()
        if bearer_allowed and not token:
            auth = headers.get(b"authorization", b"").decode("latin-1").strip()
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                owner = self.owner.get(value.strip())
                if owner is None:
                    raise AuthError("rejected", name)
                if name and owner == "root":
                    return Identity(name)
                return Identity(owner)
        if not name or not token:
            raise AuthError("missing", name)
        owner = self.owner.get(token)
        if owner is None or (owner != name and owner != "root"):
            raise AuthError("rejected", name)
        return Identity(name)
