"""URL normalisation and the table of operations, per API version.

slurmrestd splits the path on ``/``, skips empty segments and percent-decodes
each segment (``parse_url_path`` in src/common/http.c).  So ``/slurm/v0.0.43/jobs``,
``/slurm/v0.0.43/jobs/`` and ``//slurm/v0.0.43//jobs`` are one resource, and a
``%2F`` inside a segment stays inside it.  An operation exists only for the
versions that had it (e.g. ``/jobs/state`` from v0.0.40 on).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

LEGACY = "v0.0.38"
MODERN = frozenset({"v0.0.43", "v0.0.44"})
ALL = frozenset({LEGACY}) | MODERN


def split_path(raw_path: bytes) -> list[str]:
    """Non-empty segments, each percent-decoded on its own."""
    text = raw_path.decode("latin-1").split("?", 1)[0]
    return [unquote(seg, encoding="utf-8", errors="replace") for seg in text.split("/") if seg]


@dataclass(frozen=True)
class Route:
    family: str  # "slurm" | "slurmdb"
    pattern: tuple[str, ...]  # segments after the version, "{name}" = parameter
    methods: dict[str, str]  # HTTP method -> operation name
    versions: frozenset[str]

    def template(self) -> str:
        return f"/{self.family}/{{v}}/" + "/".join(self.pattern)


def _r(family: str, path: str, versions: frozenset[str] = ALL, **methods: str) -> Route:
    return Route(family, tuple(path.split("/")), methods, versions)


# Methods that exist only on 25.x are given their own entry restricted to MODERN.
ROUTES: list[Route] = [
    _r("slurm", "ping", GET="ping"),
    _r("slurm", "diag", GET="diag"),
    _r("slurm", "licenses", GET="licenses"),
    _r("slurm", "jobs", GET="jobs"),
    _r("slurm", "jobs", MODERN, DELETE="jobs_delete"),
    _r("slurm", "jobs/state", MODERN, GET="jobs_state"),
    _r("slurm", "job/submit", POST="job_submit"),
    _r("slurm", "job/{job_id}", GET="job", POST="job_update", DELETE="job_cancel"),
    _r("slurm", "nodes", GET="nodes"),
    _r("slurm", "node/{node_name}", GET="node"),
    _r("slurm", "node/{node_name}", MODERN, POST="node_update"),
    _r("slurm", "partitions", GET="partitions"),
    _r("slurm", "partition/{partition_name}", GET="partition"),
    _r("slurm", "reservations", GET="reservations"),
    _r("slurm", "reservations", MODERN, POST="reservation_create"),
    _r("slurm", "reservation", MODERN, POST="reservation_create"),
    _r("slurm", "reservation/{reservation_name}", GET="reservation"),
    _r("slurm", "reservation/{reservation_name}", MODERN, DELETE="reservation_delete"),
    _r("slurm", "shares", MODERN, GET="shares"),
    _r("slurm", "reconfigure", MODERN, GET="reconfigure"),
    _r("slurmdb", "jobs", GET="db_jobs"),
    _r("slurmdb", "job/{job_id}", GET="db_job"),
    _r("slurmdb", "users", GET="db_users", POST="db_users_add"),
    _r("slurmdb", "user/{name}", GET="db_user", DELETE="db_user_delete"),
    _r("slurmdb", "accounts", GET="db_accounts", POST="db_accounts_add"),
    _r("slurmdb", "account/{account_name}", GET="db_account", DELETE="db_account_delete"),
    _r("slurmdb", "associations", GET="db_associations", POST="db_associations_add"),
    _r("slurmdb", "association", GET="db_associations"),
    _r("slurmdb", "qos", GET="db_qos", POST="db_qos_add"),
    _r("slurmdb", "qos/{qos}", GET="db_qos_one"),
    _r("slurmdb", "tres", GET="db_tres"),
    _r("slurmdb", "clusters", GET="db_clusters"),
    _r("slurmdb", "cluster/{cluster_name}", GET="db_cluster"),
    _r("slurmdb", "wckeys", GET="db_wckeys"),
    _r("slurmdb", "config", GET="db_config"),
    _r("slurmdb", "diag", GET="db_diag"),
    _r("slurmdb", "ping", MODERN, GET="db_ping"),
]

OPENAPI_PATHS = {("openapi",), ("openapi.json",), ("openapi.yaml",), ("openapi", "v3")}


@dataclass(frozen=True)
class Match:
    route: Route
    operation: str
    version: str
    params: dict[str, str]


def match(segments: list[str], method: str, served: frozenset[str]) -> Match | None:
    """Find the operation for a normalised path, or ``None`` (-> 404)."""
    if len(segments) < 3 or segments[0] not in ("slurm", "slurmdb"):
        return None
    family, version, rest = segments[0], segments[1], tuple(segments[2:])
    if version not in served:
        return None
    for route in ROUTES:
        if route.family != family or len(route.pattern) != len(rest):
            continue
        if version not in route.versions or method not in route.methods:
            continue
        params: dict[str, str] = {}
        for pat, seg in zip(route.pattern, rest, strict=True):
            if pat.startswith("{"):
                params[pat[1:-1]] = seg
            elif pat != seg:
                break
        else:
            return Match(route, route.methods[method], version, params)
    return None
