"""The ``/slurm/...`` job operations: list, show, submit, update, cancel.

Apart from the other ``/slurm/...`` operations because jobs are the one
collection filtered per requester (``viewer``) and rendered per job from
cached fragments, and the one most writes change.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from cacheproxy.simulator import render4x
from cacheproxy.simulator import render38 as r38
from cacheproxy.simulator import view_errors as errors
from cacheproxy.simulator.entities import INVALID_JOB_ID, Job, SimError
from cacheproxy.simulator.envelope import Body, Pre, Response, error_entry, not_modified
from cacheproxy.simulator.routes import LEGACY
from cacheproxy.simulator.viewctx import (
    Ctx,
    ViewBase,
    as_int,
    json_body,
    json_body_or_empty,
    list_member,
    no_jobs_payload,
    number,
    parse_job_id,
    unchanged_since,
)


class JobViews(ViewBase):
    """``/slurm/{v}/job...`` operations."""

    def _job_dict(self, j: Job, version: str) -> dict[str, Any]:
        return r38.job(j, self.c) if version == LEGACY else render4x.job(j, self.c, version)

    def _job_fragments(self, jobs: list[Job], version: str) -> list[bytes]:
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

    # ------------------------------------------------------------------ GETs
    def jobs(self, ctx: Ctx) -> Body | Response:
        if unchanged_since(ctx.query, self.c.changed["jobs"]):
            if ctx.legacy:
                return not_modified()
            t = ctx.query["update_time"]
            return Body(
                payload=no_jobs_payload(),
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
        jobs: list[Job] = []
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
            return errors.job_not_found(ctx, raw, warnings)
        member = list_member("jobs", self._job_fragments(jobs, ctx.version), ctx.legacy)
        return Body(
            payload=[("jobs", member), *self._times(ctx, "jobs")],
            warnings=warnings,
            items=len(jobs),
        )

    # ---------------------------------------------------------------- writes
    def job_submit(self, ctx: Ctx) -> Body:
        try:
            req = json_body(ctx)
        except orjson.JSONDecodeError:
            return errors.unparsable(ctx)
        if not isinstance(req, dict):
            return errors.malformed(ctx, 9001, "unexpected empty query for job", "_job_post")
        job = req.get("job")
        script = req.get("script")
        if not isinstance(job, dict):
            return errors.malformed(
                ctx,
                9003,
                'Specifing either "job" or "jobs" fields are required to submit job',
                "_job_post",
            )
        script = script if isinstance(script, str) else job.get("script")
        if not isinstance(script, str) or not script:
            return errors.malformed(
                ctx,
                2126,
                "Batch job script empty or missing",
                "script",
                status=400 if not ctx.legacy else 500,
            )
        env = job.get("environment")
        if ctx.legacy:
            if isinstance(env, list):
                return errors.malformed(ctx, -1, "environment must be a dictionary", "job")
            if not env:
                return errors.malformed(
                    ctx, 2127, "Environment is missing in job", "job", "environment must be set"
                )
        elif not env:
            return errors.malformed(
                ctx, 2127, "Environment is missing in job", "slurm_submit_batch_job()", status=500
            )
        tl = number(job.get("time_limit"))
        try:
            created = self.c.submit(
                ctx.user,
                name=str(job.get("name") or "wrap"),
                partition=job.get("partition") if isinstance(job.get("partition"), str) else None,
                cpus=as_int(
                    job.get("tasks") or job.get("minimum_cpus") or job.get("cpus_per_task"), 1
                ),
                node_count=as_int(
                    job.get("nodes") if not isinstance(job.get("nodes"), str) else 1, 1
                ),
                time_limit=tl if isinstance(tl, int) else None,
                cwd=str(job.get("current_working_directory") or ""),
                script=script,
                account=job.get("account") if isinstance(job.get("account"), str) else None,
                qos=job.get("qos") if isinstance(job.get("qos"), str) else None,
            )
        except SimError as e:
            return errors.failed(ctx, e, "slurm_submit_batch_job()")
        return Body(
            payload=[
                ("job_id", created.job_id),
                ("step_id", "BATCH" if ctx.legacy else "batch"),
                ("job_submit_user_msg", ""),
            ]
        )

    def job_update(self, ctx: Ctx) -> Body:
        parsed = parse_job_id(ctx.params["job_id"])
        try:
            req = json_body(ctx)
        except orjson.JSONDecodeError:
            return errors.unparsable(ctx)
        if isinstance(req, dict) and isinstance(req.get("job"), dict):
            req = req["job"]
        if parsed is None or not isinstance(req, dict):
            return errors.malformed(
                ctx, *INVALID_JOB_ID, "_job_post_update", status=500 if ctx.legacy else 404
            )
        try:
            job = self.c.update_job(parsed[0], ctx.user, req)
        except SimError as e:
            return errors.failed(
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
                raise SimError(*INVALID_JOB_ID)
            if ctx.viewer is not None and not [
                j for j in self.c.find_jobs(*parsed) if self.c.job_visible(ctx.viewer, j)
            ]:
                raise SimError(*INVALID_JOB_ID)
            jobs = self.c.cancel(parsed[0], ctx.user, parsed[1])
        except SimError as e:
            if ctx.legacy:
                return errors.failed(ctx, e, "slurm_kill_job2()")
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
        req = json_body_or_empty(ctx)
        ids: list[int] | None = None
        if isinstance(req, dict) and isinstance(req.get("jobs"), list):
            ids = [p[0] for p in (parse_job_id(str(x)) for x in req["jobs"]) if p]
        user = req.get("user_name") if isinstance(req, dict) else None
        jobs = self.c.cancel_many(
            ctx.user, job_ids=ids, user=user if isinstance(user, str) else None
        )
        return Body(payload=[("status", [_kill_status(j) for j in jobs])])


def _kill_status(j: Job) -> dict[str, Any]:
    return {
        "error": {"string": "", "code": 0, "message": ""},
        "step_id": "",
        "job_id": render4x.num(j.job_id),
        "federation": {"sibling": ""},
    }


def _no_change_text(ctx: Ctx, t: int) -> str:
    """The warning of an unchanged ``/jobs``: v0.0.39's plugin words it differently."""
    if ctx.api_version == "v0.0.39":
        return f"No job changes since update_time={t}"
    return f"No job changes since update_time[{t}]={_time_str(t)}"


def _time_str(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
