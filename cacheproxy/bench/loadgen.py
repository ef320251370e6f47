"""Runs a timetable against one target, open loop, and records every request.

Each arrival is started by the event loop at its scheduled time
(``loop.call_at``), never after the previous request of that client
finished.  A request's latency is measured from when it was *due*, so time
spent waiting for a free connection or for the generator itself counts
against the target instead of silently thinning the load (no coordinated
omission).  Follow-up reads inside a scenario (the read after a write) are
measured from when they were issued: they depend on the write's answer.

The run is bounded: arrivals stop at ``spec.duration``, in-flight requests
get ``drain`` seconds, and whatever is still running then is cancelled and
counted as unfinished.

The generator watches itself: its own CPU time and how late each arrival
started (schedule lag).  A busy generator shows up as lag, and the report
says so instead of blaming the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cacheproxy.bench import cachestatus, slurmapi, workload
from cacheproxy.bench.httpclient import HttpClient, Response, decoded
from cacheproxy.bench.identities import Credential, Identities
from cacheproxy.bench.ryw import RywLedger


@dataclass(slots=True)
class Sample:
    """One request: what, when (seconds from run start) and how it went."""

    op: str
    method: str
    path: str
    due: float
    start: float
    end: float
    status: int
    nbytes: int
    cache: str
    error: str

    @property
    def latency(self) -> float:
        return self.end - self.due

    @property
    def failed(self) -> bool:
        """No answer, or an error answer.  404 is not a failure: a job that ended
        and was purged is legitimately gone (and never cached by the proxy)."""
        return self.status == 0 or (self.status >= 400 and self.status != 404)


@dataclass(slots=True)
class Tick:
    """Progress once a second; ``upstream`` is the probe's running total."""

    elapsed: float
    duration: float
    arrivals: int
    """Scenarios started so far (of ``total_arrivals``)."""
    total_arrivals: int
    responses: int
    errors: int
    inflight: int
    """Scenarios still running."""
    upstream: int | None


Probe = Callable[[], Awaitable[int | None]]
"""Returns the upstream request total so far (or None if unknown)."""


@dataclass(slots=True)
class RunResult:
    target: str
    url: str
    started_at: float
    """Wall clock (epoch seconds) at the start of the run."""
    duration: float
    wall: float
    """Seconds from start to the end of the drain."""
    samples: list[Sample] = field(default_factory=list)
    ryw: RywLedger = field(default_factory=RywLedger)
    lags: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    """The generator process's CPU time during the run."""
    unfinished: int = 0
    series: list[tuple[float, int | None]] = field(default_factory=list)
    """(elapsed seconds, probe total) once a second."""


@dataclass(slots=True)
class JobPool:
    """Job ids the reads can name: known at setup, by owner, plus this run's."""

    by_user: dict[str, list[int]] = field(default_factory=dict)
    every: list[int] = field(default_factory=list)

    def pick(self, rng: random.Random, user: str) -> int | None:
        own = self.by_user.get(user)
        if own:
            return rng.choice(own)
        return rng.choice(self.every) if self.every else None


def workload_path(version: str, name: str) -> str:
    """``jobs`` -> ``/slurm/v/jobs``; ``slurmdb/qos`` -> ``/slurmdb/v/qos``."""
    if name.startswith("slurmdb/"):
        return slurmapi.slurmdb(version, name.removeprefix("slurmdb/"))
    return slurmapi.slurm(version, name)


def _body(resp: Response) -> bytes:
    """The decoded body; an undecodable one reads as empty (so it proves nothing)."""
    try:
        return decoded(resp)
    except (ValueError, zlib.error):
        return b""


class LoadGenerator:
    def __init__(
        self,
        target: str,
        client: HttpClient,
        timetable: workload.Timetable,
        identities: Identities,
        jobs: JobPool,
        *,
        drain: float = 20.0,
        probe: Probe | None = None,
        on_tick: Callable[[Tick], None] | None = None,
        sacct_paths: tuple[str, ...] = ("slurmdb/associations", "slurmdb/accounts"),
    ) -> None:
        self.target = target
        self.client = client
        self.tt = timetable
        self.spec = timetable.spec
        self.ids = identities
        self.jobs = jobs
        self.drain = drain
        self.probe = probe
        self.on_tick = on_tick
        self.sacct_paths = sacct_paths
        self._rng = random.Random(timetable.spec.seed + 7)
        self._t0 = 0.0
        self._result = RunResult(target, client.base_url, time.time(), self.spec.duration, 0.0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._due = 0
        self._submits = 0

    # -- clock --------------------------------------------------------------
    def _now(self) -> float:
        return time.perf_counter() - self._t0

    # -- requests -----------------------------------------------------------
    async def _send(
        self,
        op: str,
        method: str,
        path: str,
        cred: Credential,
        due: float,
        body: bytes | None = None,
    ) -> Response:
        start = self._now()
        resp = await self.client.request(method, path, cred.headers(), body)
        end = self._now()
        self._result.samples.append(
            Sample(
                op,
                method,
                path,
                due,
                start,
                end,
                resp.status,
                len(resp.body),
                cachestatus.classify(resp.cache_status, resp.x_cache_status),
                resp.error,
            )
        )
        return resp

    async def _get_all(self, op: str, paths: list[str], cred: Credential, due: float) -> None:
        await asyncio.gather(
            *(self._send(f"{op}:{p.rsplit('/', 1)[-1]}", "GET", p, cred, due) for p in paths)
        )

    # -- scenarios ------------------------------------------------------------
    async def _run_arrival(self, a: workload.Arrival, due: float) -> None:
        self._result.lags.append(max(0.0, self._now() - due))
        v = self.spec.api_version
        cred = self.ids.client(a.client)
        if a.scenario == workload.DASHBOARD:
            dash = self.ids.service if self.spec.dashboard_shared else cred
            await self._get_all(
                "dashboard", [workload_path(v, p) for p in self.spec.dashboard_paths], dash, due
            )
        elif a.scenario == workload.SQUEUE:
            await self._send("squeue:jobs", "GET", slurmapi.jobs(v), cred, due)
        elif a.scenario == workload.SHOWJOB:
            job_id = self.jobs.pick(self._rng, cred.user)
            if job_id is not None:
                await self._send("showjob:job", "GET", slurmapi.job(v, job_id), cred, due)
        elif a.scenario == workload.SINFO:
            await self._get_all(
                "sinfo", [workload_path(v, "nodes"), workload_path(v, "partitions")], cred, due
            )
        elif a.scenario == workload.SACCT:
            await self._get_all(
                "sacctmgr", [workload_path(v, p) for p in self.sacct_paths], cred, due
            )
        elif a.scenario == workload.SUBMIT:
            await self._submit(a.client, cred, due)
        elif a.scenario == workload.CANCEL:
            await self._cancel(a.client, due)

    async def _submit(self, client: int, cred: Credential, due: float) -> None:
        """squeue; sbatch; squeue -- the last read must list the new job."""
        v = self.spec.api_version
        await self._send("submit:read", "GET", slurmapi.jobs(v), cred, due)
        self._submits += 1
        body = slurmapi.submit_body(v, cred.user, self._submits)
        resp = await self._send("submit:write", "POST", slurmapi.submit(v), cred, self._now(), body)
        if resp.status != 200:
            return
        job_id = slurmapi.submitted_job_id(_body(resp))
        if job_id is None:
            return
        self._result.ryw.submitted(client, job_id)
        self.jobs.by_user.setdefault(cred.user, []).append(job_id)
        check = await self._send("submit:verify", "GET", slurmapi.jobs(v), cred, self._now())
        self._result.ryw.check_submit(client, job_id, check.status, _body(check), self._now())

    async def _cancel(self, client: int, due: float) -> None:
        """scontrol show job; scancel; scontrol show job -- the last read must say CANCELLED."""
        v = self.spec.api_version
        picked = self._result.ryw.job_to_cancel(client)
        if picked is None:
            self._result.ryw.cancel_skipped += 1
            return
        job_id, owner = picked
        cred = self.ids.client(owner)
        path = slurmapi.job(v, job_id)
        await self._send("cancel:read", "GET", path, cred, due)
        resp = await self._send("cancel:write", "DELETE", path, cred, self._now())
        if not 200 <= resp.status < 300:
            return
        check = await self._send("cancel:verify", "GET", path, cred, self._now())
        self._result.ryw.check_cancel(owner, job_id, check.status, _body(check), self._now())

    # -- the run ------------------------------------------------------------
    def _spawn(self, a: workload.Arrival) -> None:
        self._due += 1
        task = asyncio.get_running_loop().create_task(self._run_arrival(a, a.t))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ticker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            upstream = None
            if self.probe is not None:
                try:
                    upstream = await asyncio.wait_for(self.probe(), timeout=2.0)
                except TimeoutError:
                    upstream = None
            elapsed = self._now()
            self._result.series.append((elapsed, upstream))
            if self.on_tick is not None:
                samples = self._result.samples
                self.on_tick(
                    Tick(
                        elapsed,
                        self.spec.duration,
                        self._due,
                        len(self.tt.arrivals),
                        len(samples),
                        sum(1 for s in samples if s.failed),
                        len(self._tasks),
                        upstream,
                    )
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def run(self) -> RunResult:
        loop = asyncio.get_running_loop()
        result = self._result
        result.started_at = time.time()
        cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        base = loop.time()
        handles = [loop.call_at(base + a.t, self._spawn, a) for a in self.tt.arrivals]
        stop = asyncio.Event()
        ticker = loop.create_task(self._ticker(stop))
        try:
            await asyncio.sleep(max(0.0, base + self.spec.duration - loop.time()))
            # Arrivals due at the very end still fire before the drain starts.
            await asyncio.sleep(0)
            deadline = loop.time() + self.drain
            while self._tasks and loop.time() < deadline:
                await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))
            result.unfinished = len(self._tasks)
        finally:
            for h in handles:
                h.cancel()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            result.wall = self._now()
            result.cpu_seconds = time.process_time() - cpu0
            stop.set()
            await ticker
        return result
