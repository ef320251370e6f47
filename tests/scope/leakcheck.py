"""What every leak test compares: each user's answers through the proxy
against the simulator's own answers to that user, ``meta`` aside."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import orjson

USERS = ("root", "user001", "user002", "user003", "user004", "user005")
OPERATOR = "user002"
COORDINATOR = ("user003", ("acct01",))
SIM_CONFIG: dict[str, Any] = {
    "jobs": 60,
    "nodes": 12,
    "operators": frozenset({OPERATOR}),
    "coordinators": {COORDINATOR[0]: COORDINATOR[1]},
}


def auth(user: str) -> dict[str, str]:
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": f"sim-token-{user}"}


def paths(job_id: int, job_user_of_other: int) -> list[str]:
    """A GET of every cached route the simulator serves, in an old and a new
    version (meta.client only from v0.0.39 on)."""
    out = []
    for v in ("v0.0.38", "v0.0.43"):
        out += [
            f"/slurm/{v}/jobs",
            f"/slurm/{v}/job/{job_id}",
            f"/slurm/{v}/job/{job_user_of_other}",
            f"/slurm/{v}/nodes",
            f"/slurm/{v}/node/cn001",
            f"/slurm/{v}/partitions",
            f"/slurm/{v}/partition/normal",
            f"/slurm/{v}/reservations",
            f"/slurm/{v}/licenses",
            f"/slurmdb/{v}/jobs",
            f"/slurmdb/{v}/job/{job_id}",
            f"/slurmdb/{v}/users",
            f"/slurmdb/{v}/user/user001",
            f"/slurmdb/{v}/accounts",
            f"/slurmdb/{v}/account/acct01",
            f"/slurmdb/{v}/associations",
            f"/slurmdb/{v}/qos",
            f"/slurmdb/{v}/tres",
            f"/slurmdb/{v}/clusters",
            f"/slurmdb/{v}/wckeys",
            f"/slurmdb/{v}/config",
        ]
    out.append("/slurm/v0.0.43/shares")
    out.append("/slurm/v0.0.43/jobs/state")
    return out


VOLATILE = ("meta", "last_update", "last_backfill")
"""Top-level members that name the requester or the time of the answer."""


def without_meta(body: bytes) -> Any:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(doc, dict):
        for volatile in VOLATILE:
            doc.pop(volatile, None)
    return doc


def truth(client: httpx.Client, users: Iterable[str], targets: Sequence[str]) -> dict[Any, Any]:
    """Each user's answer to each target, straight from the simulator."""
    return {
        (u, t): (r.status_code, without_meta(r.content))
        for u in users
        for t in targets
        for r in (client.get(t, headers=auth(u)),)
    }


def leaks(
    clients: Sequence[httpx.Client],
    expected: dict[Any, Any],
    users: Sequence[str],
    targets: Sequence[str],
    rounds: int = 2,
    shared_hits: set[str] | None = None,
) -> list[str]:
    """Ask every target as every user, in turn through each client (replica),
    in an order that makes each user read what another filled; return every
    answer that is not the simulator's own answer to that user.  The targets
    answered from the cache to a user other than the first of the round go
    into ``shared_hits``."""
    wrong = []
    n = 0
    for rnd in range(rounds):
        order = list(users) if rnd % 2 == 0 else list(reversed(users))
        for t in targets:
            for i, u in enumerate(order):
                client = clients[n % len(clients)]
                n += 1
                r = client.get(t, headers=auth(u))
                got = (r.status_code, without_meta(r.content))
                if got != expected[(u, t)]:
                    wrong.append(f"{u} {t}: {r.status_code} {r.headers.get('cache-status')}")
                hit = r.headers.get("cache-status", "").startswith("cacheproxy; hit")
                if shared_hits is not None and rnd == 0 and i > 0 and hit:
                    shared_hits.add(t)
    return wrong


def shared_targets(targets: Sequence[str], private_data: str) -> set[str]:
    """The targets whose route the proxy shares under ``private_data``."""
    from cacheproxy.core.request import split_path
    from cacheproxy.core.rules import RuleSet
    from cacheproxy.http.sitescope import SiteScopes

    rules = RuleSet.default()
    site = SiteScopes(rules.rules, private_data=private_data)
    return {t for t in targets if site.shared(rules.match("GET", split_path(t.encode())).name)}
