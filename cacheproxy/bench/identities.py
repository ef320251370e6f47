"""Who the simulated clients are: one user and token each.

Against the simulator, client ``i`` is ``user001``, ``user002`` ... with token
``sim-token-<user>``; past 100 users (the simulator's default set) the bench
writes a ``--users-file``.  Dashboards use a portal service account,
``dashboard``, so that account is always in the file.  Against a real
slurmrestd every client uses the one ``--user``/``--token`` given, or the
users of a ``--users-file``, round robin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SERVICE_USER = "dashboard"
SIM_DEFAULT_USERS = 100


@dataclass(frozen=True, slots=True)
class Credential:
    user: str
    token: str

    def headers(self) -> dict[str, str]:
        return {"X-SLURM-USER-NAME": self.user, "X-SLURM-USER-TOKEN": self.token}


def sim_user(i: int) -> str:
    """``user001`` for client 0; wider numbers past 999."""
    return f"user{i + 1:03d}"


def sim_token(user: str) -> str:
    return f"sim-token-{user}"


@dataclass(frozen=True, slots=True)
class Identities:
    clients: tuple[Credential, ...]
    service: Credential

    def client(self, i: int) -> Credential:
        return self.clients[i % len(self.clients)]

    @property
    def distinct_users(self) -> int:
        return len({c.user for c in self.clients} | {self.service.user})


def sim_names(users: int) -> list[str]:
    """Every user the simulator knows: root, the service account, the clients."""
    return ["root", SERVICE_USER, *(sim_user(i) for i in range(max(users, SIM_DEFAULT_USERS)))]


def jwt_tokens(names: list[str], key: bytes, lifetime: float = 86400.0) -> dict[str, str]:
    """An HS256 JWT per user (``sun`` the user), as ``scontrol token`` makes
    them: what a proxy with ``--jwt-key`` verifies locally."""
    import time

    import jwt

    exp = int(time.time() + lifetime)
    return {n: jwt.encode({"sun": n, "exp": exp}, key, algorithm="HS256") for n in names}


def for_simulator(users: int, tokens: dict[str, str] | None = None) -> Identities:
    def token(user: str) -> str:
        return tokens[user] if tokens is not None else sim_token(user)

    clients = tuple(Credential(sim_user(i), token(sim_user(i))) for i in range(users))
    return Identities(clients, Credential(SERVICE_USER, token(SERVICE_USER)))


def simulator_users_file(users: int, path: Path, tokens: dict[str, str] | None = None) -> Path:
    """Write the simulator's ``--users-file``: root, the clients and the service account."""
    names = sim_names(users)
    path.write_text(json.dumps({n: tokens[n] if tokens else sim_token(n) for n in names}, indent=1))
    return path


def from_users_file(path: Path) -> Identities:
    """Identities from a JSON ``{"user": "token"}`` file (real upstream mode)."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON object {{user: token}}")
    creds = tuple(Credential(str(u), str(t)) for u, t in data.items())
    return Identities(creds, creds[0])


def single(user: str, token: str) -> Identities:
    cred = Credential(user, token)
    return Identities((cred,), cred)
