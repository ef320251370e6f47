"""The operations of ``/slurm/...``: read the cluster, apply writes, shape bodies.

Every operation is synchronous and runs while the simulated controller lock
is held (see ``cost.py``), so what it reads is one consistent snapshot.
Rendering is the expensive part in Python, so lists are rendered once per
(version, viewer) and per generation of the data, and reused until a change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from cacheproxy.simulator import jsonfmt, render4x
from cacheproxy.simulator import model as m
from cacheproxy.simulator import render38 as r38
from cacheproxy.simulator.envelope import Body, Pre, Response, error_entry, not_modified
from cacheproxy.simulator.routes import LEGACY

_JOB_ID = re.compile(r"^(\d+)(?:_(\d+)|\+(\d+))?$")


@dataclass
class Ctx:
    """One request, as the operations see it."""

    version: str  # the version whose templates render this request (releases.base_version)
    family: str
    params: dict[str, str]
    query: dict[str, str]
    body: bytes
    user: str
    viewer: str | None  # None: sees every job
    client_requests: int = 0
    api_version: str = ""  # the version the request named (empty: ``version``)
    #: The daemon's release: slurmrestd, not the plugin, maps errors to statuses.
    daemon: tuple[int, int, int] = (22, 5, 8)

    @property
    def legacy(self) -> bool:
        return self.version == LEGACY

    @property
    def invalid_query_status(self) -> int:
        """ESLURM_REST_INVALID_QUERY: 400 in 22.05's operations.c, 422 from 23.02."""
        return 422 if self.daemon >= (23, 2, 0) else 400

    @property
    def job_not_found_status(self) -> int:
        """ESLURM_INVALID_JOB_ID: 404 from 23.02 (operations.c, then http.c),
        whichever plugin answered; 22.05 maps it to nothing (500)."""
        return 404 if self.daemon >= (23, 2, 0) else 500


class RenderCache:
    """Rendered members keyed by what they depend on, checked by generation."""

    def __init__(self) -> None:
        self._members: dict[tuple[Any, ...], tuple[tuple[int, ...], Pre, int]] = {}
        self._jobs: dict[tuple[int, str, str], tuple[int, bytes]] = {}

    def member(
        self,
        key: tuple[Any, ...],
        gens: tuple[int, ...],
        build: Callable[[], tuple[Pre, int]],
    ) -> tuple[Pre, int]:
        hit = self._members.get(key)
        if hit is not None and hit[0] == gens:
            return hit[1], hit[2]
        pre, n = build()
        self._members[key] = (gens, pre, n)
        return pre, n

    def job_fragment(
        self, job: m.Job, version: str, kind: str, build: Callable[[m.Job], dict[str, Any]]
    ) -> bytes:
        """One job, pretty-printed at list depth 2, cached per job version."""
        key = (job.job_id, version, kind)
        hit = self._jobs.get(key)
        if hit is not None and hit[0] == job.version:
            return hit[1]
        pretty = orjson.dumps(build(job), option=orjson.OPT_INDENT_2)
        text = b"    " + pretty.replace(b"\n", b"\n    ")
        if version == LEGACY:
            text = jsonfmt.legacy_quirks(text)
        self._jobs[key] = (job.version, text)
        return text

    @property
    def job_fragments(self) -> int:
        return len(self._jobs)

    def forget_jobs(self, alive: set[int]) -> None:
        for key in [k for k in self._jobs if k[0] not in alive]:
            del self._jobs[key]


def list_member(key: str, fragments: list[bytes], legacy: bool) -> Pre:
    """``  "key": [ ... ]`` from pre-rendered depth-2 fragments."""
    if not fragments:
        return Pre(b'  "%s": [\n  ]' % key.encode() if legacy else b'  "%s": []' % key.encode())
    parts = [b'  "%s": [\n' % key.encode()]
    for f in fragments:
        parts.append(f)
        parts.append(b",\n")
    parts[-1] = b"\n  ]"
    return Pre(b"".join(parts))


def parse_job_id(text: str) -> tuple[int, int | None] | None:
    """``123`` -> (123, None); ``123_4`` -> (123, 4); ``123+1`` -> (124, None)."""
    mt = _JOB_ID.match(text)
    if not mt:
        return None
    base = int(mt.group(1))
    if mt.group(3) is not None:
        return base + int(mt.group(3)), None
    return base, int(mt.group(2)) if mt.group(2) is not None else None


def unchanged_since(query: dict[str, str], changed: int) -> bool:
    """slurmctld's test: ``(update_time - 1) >= last change`` means "no change"."""
    raw = query.get("update_time")
    if raw is None:
        return False
    try:
        t = int(raw)
    except ValueError:
        return False
    return t - 1 >= changed


def json_body(ctx: Ctx) -> Any:
    if not ctx.body.strip():
        return None
    return orjson.loads(ctx.body)


class SlurmViews:
    """``/slurm/{v}/...`` operations."""

    def __init__(self, cluster: m.Cluster, cache: RenderCache) -> None:
        self.c = cluster
        self.cache = cache

    # --------------------------------------------------------------- helpers
    def _job_dict(self, j: m.Job, version: str) -> dict[str, Any]:
        return r38.job(j, self.c) if version == LEGACY else render4x.job(j, self.c, version)

    def _job_fragments(self, jobs: list[m.Job], version: str) -> list[bytes]:
        return [
            self.cache.job_fragment(j, version, "slurm", lambda x: self._job_dict(x, version))
            for j in jobs
        ]

    def _jobs_member(self, ctx: Ctx) -> tuple[Pre, int]:
        def build() -> tuple[Pre, int]:
            jobs = self.c.visible_jobs(ctx.viewer)
            return list_member("jobs", self._job_fragments(jobs, ctx.version), ctx.legacy), len(
                jobs
            )

        return self.cache.member(("jobs", ctx.version, ctx.viewer), (self.c.gen["jobs"],), build)

    def _times(self, ctx: Ctx, collection: str) -> list[tuple[str, Any]]:
        if ctx.legacy:
            return []
        out: list[tuple[str, Any]] = []
        if collection == "jobs":
            out.append(("last_backfill", render4x.num(self.c.last_backfill)))
        out.append(("last_update", render4x.num(self.c.now())))
        return out

    def _err(self, ctx: Ctx, e: m.SimError, source: str, status: int = 500) -> Body:
        return Body(
            errors=[error_entry(ctx.version, e.errno, e.message, source, e.description or None)],
            status=status,
        )

    def _hidden(self, ctx: Ctx, word: str) -> bool:
        """PrivateData=``word`` and the requester is no operator (``validate_operator``)."""
        return self.c.config.private(word) and not self.c.privileged(ctx.user)

    def _denied(self, ctx: Ctx, key: str, source: str, errno: int = m.ACCESS_DENIED[0]) -> Body:
        """A read slurmctld refuses with ESLURM_ACCESS_DENIED (slurmrestd: 500).

        PrivateData=nodes/partitions: ``_slurm_rpc_dump_nodes``,
        ``_slurm_rpc_dump_node_single`` and ``_slurm_rpc_dump_partitions``
        (src/slurmctld/proc_req.c, 22.05.8 to 25.11.0) refuse a non-operator
        before looking at ``update_time``.  22.05's v0.0.38 plugin lists
        ``{"error", "errno"}``; the data_parser plugins an error entry, and
        ``http_status_from_error`` (src/common/http.c) maps it to 500.
        """
        text = "Access/permission denied" if errno == m.ACCESS_DENIED[0] else "Unspecified error"
        if ctx.legacy:
            return Body(payload=[(key, [])], errors=[{"error": text, "errno": errno}], status=500)
        return Body(
            payload=[(key, [])],
            errors=[error_entry(ctx.version, errno, text, source)],
            status=500,
        )

    # ------------------------------------------------------------------ GETs
    def ping(self, ctx: Ctx) -> Body:
        p = r38.ping(self.c) if ctx.legacy else render4x.ping(self.c, ctx.version)
        return Body(payload=[("pings", [p])], items=1)

    def diag(self, ctx: Ctx) -> Body:
        if ctx.legacy:
            stats = r38.diag(self.c, ctx.client_requests)
        else:
            stats = render4x.diag(self.c, ctx.version, ctx.client_requests)
        return Body(payload=[("statistics", stats)], items=1)

    def licenses(self, ctx: Ctx) -> Body:
        used = self.c.licenses_in_use()
        if ctx.legacy:
            items = [r38.license_(n, t, used[n]) for n, t in m.LICENSES.items()]
        else:
            items = [render4x.license_(n, t, used[n], ctx.version) for n, t in m.LICENSES.items()]
        return Body(payload=[("licenses", items), *self._times(ctx, "licenses")], items=len(items))

    def jobs(self, ctx: Ctx) -> Body | Response:
        if unchanged_since(ctx.query, self.c.changed["jobs"]):
            if ctx.legacy:
                return not_modified()
            t = ctx.query["update_time"]
            return Body(
                payload=[
                    ("jobs", []),
                    ("last_backfill", render4x.num(0)),
                    ("last_update", render4x.num(0)),
                ],
                warnings=[
                    {
                        "description": _no_change_text(ctx, int(t)),
                        "source": "op_handler_jobs",
                    }
                ],
            )
        member, n = self._jobs_member(ctx)
        return Body(payload=[("jobs", member), *self._times(ctx, "jobs")], items=n)

    def jobs_state(self, ctx: Ctx) -> Body:
        wanted: set[int] | None = None
        if ctx.query.get("job_id"):
            wanted = set()
            for part in ctx.query["job_id"].split(","):
                parsed = parse_job_id(part.strip())
                if parsed:
                    wanted.add(parsed[0])
        jobs = [
            j
            for j in self.c.visible_jobs(ctx.viewer)
            if wanted is None or j.job_id in wanted or j.array_job_id in wanted
        ]
        return Body(payload=[("jobs", [render4x.job_state(j) for j in jobs])], items=len(jobs))

    def job(self, ctx: Ctx) -> Body:
        raw = ctx.params["job_id"]
        parsed = parse_job_id(raw)
        jobs: list[m.Job] = []
        warnings: list[dict[str, Any]] = []
        if parsed is not None:
            job_id, task = parsed
            if ctx.legacy:
                jobs = self.c.find_jobs(job_id, task)
            else:
                # 25.x: "Job array Ids are not currently supported": whole array.
                jobs = self.c.find_jobs(job_id)
                if task is not None:
                    warnings.append(
                        {
                            "description": "Job array Ids are not currently supported for "
                            "job searches. Showing all jobs in array instead.",
                            "source": "_handle_job_get",
                        }
                    )
        jobs = [j for j in jobs if self.c.job_visible(ctx.viewer, j)]
        if not jobs:
            if ctx.legacy:
                return Body(
                    payload=[("jobs", [])],
                    errors=[
                        error_entry(
                            ctx.version,
                            *m.INVALID_JOB_ID,
                            "slurm_load_job",
                            f"Unable to find JobId={raw}",
                        )
                    ],
                    status=ctx.job_not_found_status,
                )
            return Body(
                payload=[
                    ("jobs", []),
                    ("last_backfill", render4x.num(0)),
                    ("last_update", render4x.num(0)),
                ],
                errors=[
                    error_entry(
                        ctx.version,
                        *m.INVALID_JOB_ID,
                        "_handle_job_get",
                        f"Unable to query JobId={raw}",
                    )
                ],
                warnings=warnings,
                status=ctx.job_not_found_status,
            )
        member = list_member("jobs", self._job_fragments(jobs, ctx.version), ctx.legacy)
        return Body(
            payload=[("jobs", member), *self._times(ctx, "jobs")],
            warnings=warnings,
            items=len(jobs),
        )

    def _nodes_member(self, ctx: Ctx) -> tuple[Pre, int]:
        def build() -> tuple[Pre, int]:
            if ctx.legacy:
                items = [r38.node(n, self.c) for n in self.c.nodes.values()]
            else:
                items = [render4x.node(n, self.c, ctx.version) for n in self.c.nodes.values()]
            return Pre(jsonfmt.member("nodes", items, ctx.legacy)), len(items)

        gens = (self.c.gen["nodes"], self.c.gen["reservations"])
        return self.cache.member(("nodes", ctx.version), gens, build)

    def _nodes_hidden(self, ctx: Ctx) -> Body | None:
        """PrivateData=nodes hides nodes; so does =partitions on data_parser
        releases, whose ``_dump_nodes`` (openapi/slurmctld/nodes.c, 23.11 to
        25.11) loads the partitions too and fails the request with that
        call's ``SLURM_ERROR`` when slurmctld refuses it."""
        if self._hidden(ctx, "nodes"):
            return self._denied(ctx, "nodes", "slurm_load_node")
        if not ctx.legacy and self._hidden(ctx, "partitions"):
            return self._denied(ctx, "nodes", "_dump_nodes", errno=-1)
        return None

    def nodes(self, ctx: Ctx) -> Body | Response:
        refused = self._nodes_hidden(ctx)
        if refused is not None:
            return refused
        # data_parser releases pass the same update_time to slurm_load_partitions()
        # for the nodes' partition lists, and its "no change" becomes the answer:
        # 304 although nodes changed, when partitions did not (slurmctld/nodes.c).
        if unchanged_since(ctx.query, self.c.changed["nodes"]) or (
            not ctx.legacy and unchanged_since(ctx.query, self.c.changed["partitions"])
        ):
            return not_modified()
        member, n = self._nodes_member(ctx)
        return Body(payload=[("nodes", member), *self._times(ctx, "nodes")], items=n)

    def node(self, ctx: Ctx) -> Body:
        """One node; ``update_time`` is not a parameter here (22.05) or ignored (25.x)."""
        refused = self._nodes_hidden(ctx)
        if refused is not None:
            return refused
        name = ctx.params["node_name"]
        n = self.c.nodes.get(name)
        if n is None:
            if ctx.legacy:
                return Body(
                    payload=[("nodes", [])],
                    errors=[{"error": "Invalid node name specified", "errno": 2018}],
                    status=500,
                )
            return Body(
                errors=[
                    error_entry(
                        ctx.version, 0, "No error", "_dump_nodes", f"Failure to query node {name}"
                    )
                ],
                errors_first=True,
            )
        item = r38.node(n, self.c) if ctx.legacy else render4x.node(n, self.c, ctx.version)
        return Body(payload=[("nodes", [item]), *self._times(ctx, "nodes")], items=1)

    def partitions(self, ctx: Ctx) -> Body | Response:
        if self._hidden(ctx, "partitions"):
            return self._denied(ctx, "partitions", "slurm_load_partitions")
        if unchanged_since(ctx.query, self.c.changed["partitions"]):
            return not_modified()
        items = [self._partition(p, ctx) for p in self.c.partitions.values()]
        return Body(
            payload=[("partitions", items), *self._times(ctx, "partitions")], items=len(items)
        )

    def _partition(self, p: m.Partition, ctx: Ctx) -> dict[str, Any]:
        return (
            r38.partition(p, self.c) if ctx.legacy else render4x.partition(p, self.c, ctx.version)
        )

    def partition(self, ctx: Ctx) -> Body | Response:
        if self._hidden(ctx, "partitions"):
            return self._denied(ctx, "partitions", "slurm_load_partitions")
        if unchanged_since(ctx.query, self.c.changed["partitions"]):
            return not_modified()
        p = self.c.partitions.get(ctx.params["partition_name"])
        if p is None:
            if ctx.legacy:
                return Body(
                    payload=[("partitions", [])],
                    errors=[{"error": "Invalid partition name specified", "errno": 2000}],
                    status=500,
                )
            return self._unknown_name(ctx, "partitions", ctx.params["partition_name"])
        return Body(
            payload=[("partitions", [self._partition(p, ctx)]), *self._times(ctx, "partitions")],
            items=1,
        )

    def _unknown_name(self, ctx: Ctx, key: str, name: str) -> Body:
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
            errors=[
                error_entry(ctx.version, *m.INVALID_QUERY, source, f"Unable to find {what} {name}")
            ],
            status=ctx.invalid_query_status,
        )

    def _reservation(self, r: m.Reservation, ctx: Ctx) -> dict[str, Any]:
        if ctx.legacy:
            return r38.reservation(r, self.c)
        return render4x.reservation(r, self.c, ctx.version)

    def _usable(self, ctx: Ctx) -> list[m.Reservation]:
        """PrivateData=reservations: a non-operator sees the reservations they
        may use (``show_resv`` and ``_validate_user_access``,
        src/slurmctld/reservation.c, 22.05.8 to 25.11.0): by account when the
        reservation names accounts (any of the user's associations), else by
        its user list."""
        if not self._hidden(ctx, "reservations"):
            return list(self.c.reservations.values())
        accounts = self.c.user_accounts(ctx.user)
        out = []
        for r in self.c.reservations.values():
            named = [a for a in r.accounts.split(",") if a]
            if named:
                if accounts & set(named):
                    out.append(r)
            elif ctx.user in r.users.split(","):
                out.append(r)
        return out

    def reservations(self, ctx: Ctx) -> Body | Response:
        if unchanged_since(ctx.query, self.c.changed["reservations"]):
            return not_modified()
        items = [self._reservation(r, ctx) for r in self._usable(ctx)]
        return Body(
            payload=[("reservations", items), *self._times(ctx, "reservations")], items=len(items)
        )

    def reservation(self, ctx: Ctx) -> Body | Response:
        if unchanged_since(ctx.query, self.c.changed["reservations"]):
            return not_modified()
        name = ctx.params["reservation_name"]
        r = next((x for x in self._usable(ctx) if x.name == name), None)
        if r is None and not ctx.legacy:
            return self._unknown_name(ctx, "reservations", name)
        if r is None:  # v0.0.36-38: ESLURM_RESERVATION_INVALID, which no release maps (500)
            return Body(
                payload=[("reservations", []), *self._times(ctx, "reservations")],
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
        return Body(
            payload=[
                ("reservations", [self._reservation(r, ctx)]),
                *self._times(ctx, "reservations"),
            ],
            items=1,
        )

    def shares(self, ctx: Ctx) -> Body:
        users = set(ctx.query["users"].split(",")) if ctx.query.get("users") else None
        accounts = set(ctx.query["accounts"].split(",")) if ctx.query.get("accounts") else None
        visible = None
        if self._hidden(ctx, "usage"):
            # assoc_mgr_get_shares (src/common/assoc_mgr.c, 22.05.8 to 25.11.0):
            # own user associations and every association of a coordinated account.
            coord = self.c.coordinated(ctx.user)
            visible = {
                a.id for a in self.c.associations if a.user == ctx.user or a.account in coord
            }
        s = render4x.shares(self.c, ctx.version, users, accounts, visible)
        return Body(payload=[("shares", s)], items=len(s["shares"]))

    # ---------------------------------------------------------------- writes
    def reconfigure(self, ctx: Ctx) -> Body:
        try:
            self.c.reconfigure(ctx.user)
        except m.SimError as e:
            return self._err(ctx, e, "slurm_reconfigure()")
        return Body()

    def job_submit(self, ctx: Ctx) -> Body:
        try:
            req = json_body(ctx)
        except orjson.JSONDecodeError:
            return Body(
                errors=[error_entry(ctx.version, 9001, "Unable to parse query", "parse")],
                status=400,
            )
        if not isinstance(req, dict):
            return Body(
                errors=[
                    error_entry(ctx.version, 9001, "unexpected empty query for job", "_job_post")
                ],
                status=400,
            )
        job = req.get("job")
        script = req.get("script")
        if not isinstance(job, dict):
            return Body(
                errors=[
                    error_entry(
                        ctx.version,
                        9003,
                        'Specifing either "job" or "jobs" fields are required to submit job',
                        "_job_post",
                    )
                ],
                status=400,
            )
        script = script if isinstance(script, str) else job.get("script")
        if not isinstance(script, str) or not script:
            return Body(
                errors=[
                    error_entry(ctx.version, 2126, "Batch job script empty or missing", "script")
                ],
                status=400 if not ctx.legacy else 500,
            )
        env = job.get("environment")
        if ctx.legacy:
            if isinstance(env, list):
                return Body(
                    errors=[
                        error_entry(ctx.version, -1, "environment must be a dictionary", "job")
                    ],
                    status=400,
                )
            if not env:
                return Body(
                    errors=[
                        error_entry(
                            ctx.version,
                            2127,
                            "Environment is missing in job",
                            "job",
                            "environment must be set",
                        )
                    ],
                    status=400,
                )
        elif not env:
            return Body(
                errors=[
                    error_entry(
                        ctx.version,
                        2127,
                        "Environment is missing in job",
                        "slurm_submit_batch_job()",
                    )
                ],
                status=500,
            )
        tl = job.get("time_limit")
        if isinstance(tl, dict):
            tl = tl.get("number")
        try:
            created = self.c.submit(
                ctx.user,
                name=str(job.get("name") or "wrap"),
                partition=job.get("partition") if isinstance(job.get("partition"), str) else None,
                cpus=_int(
                    job.get("tasks") or job.get("minimum_cpus") or job.get("cpus_per_task"), 1
                ),
                node_count=_int(
                    job.get("nodes") if not isinstance(job.get("nodes"), str) else 1, 1
                ),
                time_limit=tl if isinstance(tl, int) else None,
                cwd=str(job.get("current_working_directory") or ""),
                script=script,
                account=job.get("account") if isinstance(job.get("account"), str) else None,
                qos=job.get("qos") if isinstance(job.get("qos"), str) else None,
            )
        except m.SimError as e:
            return self._err(ctx, e, "slurm_submit_batch_job()")
        if ctx.legacy:
            return Body(
                payload=[
                    ("job_id", created.job_id),
                    ("step_id", "BATCH"),
                    ("job_submit_user_msg", ""),
                ]
            )
        return Body(
            payload=[
                ("job_id", created.job_id),
                ("step_id", "batch"),
                ("job_submit_user_msg", ""),
            ]
        )

    def job_update(self, ctx: Ctx) -> Body:
        parsed = parse_job_id(ctx.params["job_id"])
        try:
            req = json_body(ctx)
        except orjson.JSONDecodeError:
            return Body(
                errors=[error_entry(ctx.version, 9001, "Unable to parse query", "parse")],
                status=400,
            )
        if isinstance(req, dict) and isinstance(req.get("job"), dict):
            req = req["job"]
        if parsed is None or not isinstance(req, dict):
            return Body(
                errors=[error_entry(ctx.version, *m.INVALID_JOB_ID, "_job_post_update")],
                status=500 if ctx.legacy else 404,
            )
        try:
            job = self.c.update_job(parsed[0], ctx.user, req)
        except m.SimError as e:
            return self._err(
                ctx, e, "slurm_update_job2()", 404 if (e.errno == 2017 and not ctx.legacy) else 500
            )
        if ctx.legacy:
            return Body()
        return Body(
            payload=[
                (
                    "results",
                    [
                        {
                            "job_id": job.job_id,
                            "step_id": "",
                            "error": "No error",
                            "error_code": 0,
                            "why": "Job updated",
                        }
                    ],
                ),
            ]
        )

    def job_cancel(self, ctx: Ctx) -> Body:
        parsed = parse_job_id(ctx.params["job_id"])
        try:
            if parsed is None:
                raise m.SimError(*m.INVALID_JOB_ID)
            if ctx.viewer is not None and not [
                j for j in self.c.find_jobs(*parsed) if self.c.job_visible(ctx.viewer, j)
            ]:
                raise m.SimError(*m.INVALID_JOB_ID)
            jobs = self.c.cancel(parsed[0], ctx.user, parsed[1])
        except m.SimError as e:
            if ctx.legacy:
                return self._err(ctx, e, "slurm_kill_job2()")
            return Body(
                payload=[("status", [])],
                errors=[
                    error_entry(
                        ctx.version,
                        e.errno,
                        e.message,
                        "slurm_kill_jobs()",
                        "Signal request failed",
                    )
                ],
                status=404 if e.errno == 2017 else 500,
            )
        if ctx.legacy:
            return Body()
        return Body(payload=[("status", [_kill_status(j) for j in jobs])])

    def jobs_delete(self, ctx: Ctx) -> Body:
        try:
            req = json_body(ctx) or {}
        except orjson.JSONDecodeError:
            req = {}
        ids: list[int] | None = None
        if isinstance(req, dict) and isinstance(req.get("jobs"), list):
            ids = [p[0] for p in (parse_job_id(str(x)) for x in req["jobs"]) if p]
        user = req.get("user_name") if isinstance(req, dict) else None
        jobs = self.c.cancel_many(
            ctx.user, job_ids=ids, user=user if isinstance(user, str) else None
        )
        return Body(payload=[("status", [_kill_status(j) for j in jobs])])

    def node_update(self, ctx: Ctx) -> Body:
        try:
            req = json_body(ctx) or {}
        except orjson.JSONDecodeError:
            req = {}
        state = req.get("state") if isinstance(req, dict) else None
        if isinstance(state, list):
            state = state[0] if state else None
        reason = req.get("reason") if isinstance(req, dict) else None
        try:
            self.c.update_node(
                ctx.params["node_name"],
                ctx.user,
                state if isinstance(state, str) else None,
                reason if isinstance(reason, str) else None,
            )
        except m.SimError as e:
            return self._err(ctx, e, "slurm_update_node()")
        return Body()

    def reservation_create(self, ctx: Ctx) -> Body:
        try:
            req = json_body(ctx) or {}
        except orjson.JSONDecodeError:
            req = {}
        items = req.get("reservations") if isinstance(req, dict) else None
        if not isinstance(items, list):
            items = [req]
        created = []
        try:
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    raise m.SimError(2050, "Requested reservation is invalid")
                nodes = item.get("node_list") or []
                if isinstance(nodes, str):
                    nodes = [n for n in nodes.split(",") if n]
                now = self.c.now()
                res = m.Reservation(
                    name=item["name"],
                    nodes=[n for n in nodes if n in self.c.nodes],
                    start_time=_int(_number(item.get("start_time")), now),
                    end_time=_int(_number(item.get("end_time")), now + 3600),
                    users=",".join(item["users"])
                    if isinstance(item.get("users"), list)
                    else str(item.get("users") or ""),
                    accounts=",".join(item["accounts"])
                    if isinstance(item.get("accounts"), list)
                    else str(item.get("accounts") or ""),
                    flags=[f for f in item.get("flags", []) if isinstance(f, str)],
                    partition=str(item.get("partition") or ""),
                )
                created.append(self.c.create_reservation(ctx.user, res))
        except m.SimError as e:
            return self._err(ctx, e, "slurm_create_reservation()")
        return Body(payload=[("reservations", [self._reservation(r, ctx) for r in created])])

    def reservation_delete(self, ctx: Ctx) -> Body:
        try:
            self.c.delete_reservation(ctx.user, ctx.params["reservation_name"])
        except m.SimError as e:
            return self._err(ctx, e, "slurm_delete_reservation()", 404 if e.errno == 2050 else 500)
        return Body()


def _kill_status(j: m.Job) -> dict[str, Any]:
    return {
        "error": {"string": "", "code": 0, "message": ""},
        "step_id": "",
        "job_id": render4x.num(j.job_id),
        "federation": {"sibling": ""},
    }


def _number(v: Any) -> Any:
    return v.get("number") if isinstance(v, dict) else v


def _int(v: Any, default: int) -> int:
    if isinstance(v, bool):
        return default
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return default


def _no_change_text(ctx: Ctx, t: int) -> str:
    """The warning of an unchanged ``/jobs``: v0.0.39's plugin words it differently."""
    if ctx.api_version == "v0.0.39":
        return f"No job changes since update_time={t}"
    return f"No job changes since update_time[{t}]={_time_str(t)}"


def _time_str(t: int) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.localtime(t))
