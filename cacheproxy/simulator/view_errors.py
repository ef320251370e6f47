"""The failed answers of simulated operations, as each release words them.

Apart from the operations because a failure's shape is the part that
differs most between releases (22.05's v0.0.38 plugin lists
``{"error", "errno"}`` or error entries with statuses of its own; the
data_parser plugins of 23.02 on their own entries, sources and payload
keys), while the operations' logic is the same for all of them.  Checked
against the real daemons in ``tests/simulator/test_error_views.py``.
"""

from __future__ import annotations

from typing import Any

from cacheproxy.simulator.entities import ACCESS_DENIED, INVALID_JOB_ID, INVALID_QUERY, SimError
from cacheproxy.simulator.envelope import Body, error_entry
from cacheproxy.simulator.viewctx import Ctx, no_jobs_payload


def failed(ctx: Ctx, e: SimError, source: str, status: int = 500) -> Body:
    """A call into slurmctld that failed with ``e``."""
    return Body(
        errors=[error_entry(ctx.version, e.errno, e.message, source, e.description or None)],
        status=status,
    )


def malformed(
    ctx: Ctx,
    errno: int,
    text: str,
    source: str,
    description: str | None = None,
    status: int = 400,
) -> Body:
    """A request body slurmrestd refuses before asking slurmctld."""
    return Body(errors=[error_entry(ctx.version, errno, text, source, description)], status=status)


def unparsable(ctx: Ctx) -> Body:
    """A body that is no JSON."""
    return malformed(ctx, 9001, "Unable to parse query", "parse")


def denied(ctx: Ctx, key: str, source: str, errno: int = ACCESS_DENIED[0]) -> Body:
    """A read slurmctld refuses with ESLURM_ACCESS_DENIED (slurmrestd: 500).

    PrivateData=nodes/partitions: ``_slurm_rpc_dump_nodes``,
    ``_slurm_rpc_dump_node_single`` and ``_slurm_rpc_dump_partitions``
    (src/slurmctld/proc_req.c, 22.05.8 to 25.11.0) refuse a non-operator
    before looking at ``update_time``.  22.05's v0.0.38 plugin lists
    ``{"error", "errno"}``; the data_parser plugins an error entry, and
    ``http_status_from_error`` (src/common/http.c) maps it to 500.
    """
    text = "Access/permission denied" if errno == ACCESS_DENIED[0] else "Unspecified error"
    if ctx.legacy:
        return _v38_failure(key, text, errno)
    return Body(
        payload=[(key, [])],
        errors=[error_entry(ctx.version, errno, text, source)],
        status=500,
    )


def _v38_failure(key: str, text: str, errno: int) -> Body:
    """v0.0.38's own error entry, ``{"error", "errno"}``, beside an empty list."""
    return Body(payload=[(key, [])], errors=[{"error": text, "errno": errno}], status=500)


def unknown_name(ctx: Ctx, key: str, name: str) -> Body:
    """A partition or reservation the data_parser plugins do not find.

    They search the whole list themselves and report
    ESLURM_REST_INVALID_QUERY "Unable to find partition|reservation NAME"
    (422) without dumping anything: v0.0.39 leaves its payload key null
    (``data_key_set``), later versions send no payload at all.
    """
    what = key.removesuffix("s")
    if ctx.api_version == "v0.0.39":
        source, payload = f"_op_handler_{key}", [(key, None)]
    else:
        source, payload = f"op_handler_{what}", []
    return Body(
        payload=payload,
        errors=[error_entry(ctx.version, *INVALID_QUERY, source, f"Unable to find {what} {name}")],
        status=ctx.invalid_query_status,
    )


def job_not_found(ctx: Ctx, raw: str, warnings: list[dict[str, Any]]) -> Body:
    """``GET job/{job_id}`` of no job the requester may see."""
    if ctx.legacy:
        return Body(
            payload=[("jobs", [])],
            errors=[
                error_entry(
                    ctx.version,
                    *INVALID_JOB_ID,
                    "slurm_load_job",
                    f"Unable to find JobId={raw}",
                )
            ],
            status=ctx.job_not_found_status,
        )
    return Body(
        payload=no_jobs_payload(),
        errors=[
            error_entry(
                ctx.version,
                *INVALID_JOB_ID,
                "_handle_job_get",
                f"Unable to query JobId={raw}",
            )
        ],
        warnings=warnings,
        status=ctx.job_not_found_status,
    )


def node_not_found(ctx: Ctx, name: str) -> Body:
    """``GET node/{node_name}`` of no node: 25.x answers 200 with an error entry."""
    if ctx.legacy:
        return _v38_failure("nodes", "Invalid node name specified", 2018)
    return Body(
        errors=[
            error_entry(ctx.version, 0, "No error", "_dump_nodes", f"Failure to query node {name}")
        ],
        errors_first=True,
    )


def partition_not_found(ctx: Ctx, name: str) -> Body:
    if ctx.legacy:
        return _v38_failure("partitions", "Invalid partition name specified", 2000)
    return unknown_name(ctx, "partitions", name)


def reservation_not_found(ctx: Ctx, name: str) -> Body:
    """v0.0.36-38: ESLURM_RESERVATION_INVALID, which no release maps (500)."""
    if not ctx.legacy:
        return unknown_name(ctx, "reservations", name)
    return Body(
        payload=[("reservations", [])],
        errors=[
            error_entry(
                ctx.version,
                2050,
                "Requested reservation is invalid",
                "_op_handler_reservation",
                f"Unable to find reservation {name}",
            )
        ],
        status=500,
    )
