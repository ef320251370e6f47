"""One benchmark session: the processes under test, and one run per target.

A session owns the simulator (or points at a real slurmrestd), the proxy and
optionally nginx.  Each run replays the same timetable against one target;
the proxy and nginx are restarted before each of their runs after the first,
so every run starts with a cold cache, like the first one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from cacheproxy.bench import (
    counters,
    identities,
    nginx,
    procs,
    slurmapi,
    summary,
    sysload,
    workload,
)
from cacheproxy.bench.httpclient import DEFAULT_ACCEPT_ENCODING, HttpClient
from cacheproxy.bench.identities import Identities
from cacheproxy.bench.loadgen import JobPool, LoadGenerator, RunResult, Tick, workload_path

DIRECT = "direct"
PROXY = "proxy"
NGINX = "nginx"
TARGETS = (DIRECT, PROXY, NGINX)


class SetupError(RuntimeError):
    """The session cannot run: the message names the failing request or process."""


@dataclass(slots=True)
class SessionOptions:
    outdir: Path
    spec: workload.WorkloadSpec
    targets: list[str]
    upstream: str | None = None
    """A real slurmrestd URL; None starts the simulator."""
    identities: Identities | None = None
    """Real upstream mode: who the clients are."""
    max_users: int = 100
    sim_tokens: dict[str, str] | None = None
    """Simulator mode: each user's token (None: ``sim-token-<user>``)."""
    sim_jobs: int = 2000
    sim_nodes: int = 500
    sim_args: list[str] = field(default_factory=list)
    proxy_args: list[str] = field(default_factory=list)
    drain: float = 20.0
    timeout: float = 30.0
    connections: int = 256
    accept_encoding: str = DEFAULT_ACCEPT_ENCODING
    on_tick: Callable[[str, Tick], None] | None = None
    log: Callable[[str], None] = print


@dataclass(slots=True)
class RunOutput:
    summary: dict[str, Any]
    latencies_ms: list[float]


class Session:
    def __init__(self, opts: SessionOptions) -> None:
        self.opts = opts
        self.sim: procs.Service | None = None
        self.proxy: procs.Service | None = None
        self.nginx: procs.Service | None = None
        self.upstream_url = opts.upstream or ""
        self.ids: Identities = opts.identities or identities.for_simulator(
            opts.max_users, opts.sim_tokens
        )
        self.jobs = JobPool()
        self.spec = opts.spec
        """The workload as run: paths the upstream does not serve are dropped."""
        self.sacct_paths: tuple[str, ...] = ("slurmdb/associations", "slurmdb/accounts")
        self.notes: list[str] = []
        self.crashed: list[str] = []
        self._reported: set[int] = set()
        """Processes under test that died during a run (the run is not valid)."""
        self._runs_per_target: dict[str, int] = {}

    @property
    def simulated(self) -> bool:
        return self.opts.upstream is None

    # -- lifecycle --------------------------------------------------------------
    async def __aenter__(self) -> Session:
        try:
            await self._start()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _start(self) -> None:
        o = self.opts
        o.outdir.mkdir(parents=True, exist_ok=True)
        if self.simulated:
            users_file = identities.simulator_users_file(
                o.max_users, o.outdir / "sim-users.json", o.sim_tokens
            )
            o.log(f"starting the simulator ({o.sim_jobs} jobs, {o.sim_nodes} nodes)...")
            self.sim = await procs.start_simulator(
                o.outdir,
                users_file=users_file,
                jobs=o.sim_jobs,
                nodes=o.sim_nodes,
                seed=o.spec.seed,
                extra=o.sim_args,
            )
            self.upstream_url = self.sim.url
            o.log(f"simulator: {self.sim.url} (pid {self.sim.proc.pid})")
        if PROXY in o.targets:
            await self._start_proxy()
        if NGINX in o.targets:
            await self._start_nginx()
        await self._discover()

    async def _start_proxy(self) -> None:
        self.proxy = await procs.start_proxy(
            self.opts.outdir, self.upstream_url, extra=self.opts.proxy_args
        )
        self.opts.log(f"proxy: {self.proxy.url} (pid {self.proxy.proc.pid})")

    async def _start_nginx(self) -> None:
        self.nginx = await nginx.start_nginx(self.opts.outdir, self.upstream_url)
        self.opts.log(f"nginx: {self.nginx.url} (pid {self.nginx.proc.pid})")

    def stop(self) -> None:
        for svc in (self.nginx, self.proxy, self.sim):
            if svc is not None:
                svc.stop()

    async def _restart(self, target: str) -> None:
        """A cold cache for every run of a caching target."""
        if target == PROXY and self.proxy is not None:
            self.proxy.stop()
            await self._start_proxy()
        elif target == NGINX and self.nginx is not None:
            self.nginx.stop()
            await self._start_nginx()

    # -- setup reads ------------------------------------------------------------
    async def _discover(self) -> None:
        """Learn job ids, and which slurmdb reads the upstream serves."""
        v = self.spec.api_version
        cred = self.ids.service
        async with HttpClient(self.upstream_url, connections=4, timeout=60.0) as http:
            path = slurmapi.jobs(v)
            resp = await http.request("GET", path, cred.headers())
            if resp.status != 200:
                raise SetupError(
                    f"GET {self.upstream_url}{path} as {cred.user} answered "
                    f"{resp.status or resp.error}: {resp.body[:300]!r}"
                )
            by_user = slurmapi.jobs_by_user(resp.body)
            self.jobs = JobPool(by_user, [j for ids in by_user.values() for j in ids])
            served = {}
            for name in {*self.sacct_paths, *self.spec.dashboard_paths}:
                path = workload_path(v, name)
                r = await http.request("GET", path, cred.headers())
                served[name] = r.status == 200
                if r.status != 200:
                    self.notes.append(
                        f"GET {path} answered {r.status or r.error}: left out of the workload"
                    )
            self.sacct_paths = tuple(p for p in self.sacct_paths if served[p])
            dash = tuple(p for p in self.spec.dashboard_paths if served[p])
            if not dash:
                raise SetupError(f"{self.upstream_url} serves none of the dashboard paths")
            self.spec = replace(self.spec, dashboard_paths=dash)
        self.opts.log(f"upstream has {len(self.jobs.every)} jobs of {len(self.jobs.by_user)} users")

    # -- runs -------------------------------------------------------------------
    def _target_url(self, target: str) -> str:
        svc = {PROXY: self.proxy, NGINX: self.nginx}.get(target)
        if target == DIRECT:
            return self.upstream_url
        if svc is None:
            raise SetupError(f"target {target} is not running")
        return svc.url

    def _cpu(self) -> dict[str, float | None]:
        return {
            name: svc.cpu_seconds()
            for name, svc in (("simulator", self.sim), ("proxy", self.proxy), ("nginx", self.nginx))
            if svc is not None
        }

    async def run(self, target: str, users: int) -> RunOutput:
        o = self.opts
        if self._runs_per_target.get(target, 0) > 0:
            await self._restart(target)
        self._runs_per_target[target] = self._runs_per_target.get(target, 0) + 1
        spec = self.spec.with_users(users)
        tt = workload.build_timetable(spec)
        url = self._target_url(target)
        side = HttpClient(self.upstream_url, connections=4, timeout=10.0)
        proxy_side = HttpClient(self.proxy.url, connections=2, timeout=10.0) if self.proxy else None
        async with side:
            if proxy_side is not None:
                await proxy_side.__aenter__()
            try:
                counter, proxy_counter = self._counters(target, side, proxy_side)
                diag = await self._diag_counter(side)
                await counter.start()
                if proxy_counter is not None and proxy_counter is not counter:
                    await proxy_counter.start()
                cpu0 = self._cpu()
                sys0 = sysload.snapshot()
                jobs = JobPool(
                    {u: list(j) for u, j in self.jobs.by_user.items()}, list(self.jobs.every)
                )
                async with HttpClient(
                    url,
                    connections=o.connections,
                    timeout=o.timeout,
                    accept_encoding=o.accept_encoding,
                ) as http:
                    gen = LoadGenerator(
                        target,
                        http,
                        tt,
                        self.ids,
                        jobs,
                        drain=o.drain,
                        probe=counter.total if counter.source != "client" else None,
                        on_tick=_labelled(o.on_tick, f"{target} {users}u"),
                        sacct_paths=self.sacct_paths,
                    )
                    result = await gen.run()
                # Let the targets' counters settle (responses sent before counted).
                await asyncio.sleep(0.2)
                self._check_alive(target)
                cpu1 = self._cpu()
                sys1 = sysload.snapshot()
                out = await self._summarize(target, users, result, counter, proxy_counter)
                if diag is not None:
                    rpcs = await diag.total()
                    out["controller_rpcs"] = {"source": "diag", "count": rpcs}
                cpu = {
                    k: round(v - (cpu0.get(k) or 0.0), 3) for k, v in cpu1.items() if v is not None
                }
                out["process_cpu_seconds"] = cpu
                out["machine"] = sysload.usage(sys0, sys1, result.cpu_seconds + sum(cpu.values()))
            finally:
                if proxy_side is not None:
                    await proxy_side.__aexit__(None, None, None)
        lat = [s.latency * 1000.0 for s in result.samples if s.status != 0]
        return RunOutput(out, lat)

    async def _diag_counter(self, side: HttpClient) -> counters.DiagCounter | None:
        """slurmctld's own RPC count, when a real upstream serves ``/diag``.

        Reported beside the REST counts: it is what the controller felt, other
        clients of the cluster included.
        """
        if self.simulated:
            return None
        diag = counters.DiagCounter(side, self.ids.service, self.spec.api_version)
        if not await diag.available():
            return None
        await diag.start()
        return diag

    def _check_alive(self, target: str) -> None:
        """A process under test that died mid-run makes the run's numbers meaningless."""
        for svc in (self.sim, self.proxy, self.nginx):
            if svc is not None and not svc.alive() and svc.proc.pid not in self._reported:
                self._reported.add(svc.proc.pid)
                msg = (
                    f"{svc.name} exited with code {svc.proc.returncode} during the {target} run "
                    f"(see {svc.log_path.name})"
                )
                self.notes.append(msg)
                self.crashed.append(msg)
                self.opts.log("WARNING: " + msg)

    def _counters(
        self, target: str, side: HttpClient, proxy_side: HttpClient | None
    ) -> tuple[counters.Counter, counters.ProxyCounter | None]:
        proxy_counter = counters.ProxyCounter(proxy_side) if proxy_side is not None else None
        if self.simulated:
            sim: counters.Counter = counters.SimulatorCounter(side)
            return sim, proxy_counter if target == PROXY else None
        if target == PROXY and proxy_counter is not None:
            return proxy_counter, proxy_counter
        return counters.ClientCounter(), None

    async def _summarize(
        self,
        target: str,
        users: int,
        result: RunResult,
        counter: counters.Counter,
        proxy_counter: counters.ProxyCounter | None,
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {"users": users}
        coalesced = None
        total = await counter.total()
        source = counter.source
        if counter.source == "client":
            # Direct: every request went upstream.  nginx (real upstream):
            # every answer that was not a cache hit did.
            if target == DIRECT:
                total = len(result.samples) + result.unfinished
            else:
                total = sum(1 for s in result.samples if s.cache not in ("hit", "collapsed"))
        if total is None:
            total = 0
            source = "none"
            self.notes.append(f"{target}: no upstream count available")
        extra["upstream_detail"] = await counter.details()
        extra["workload"] = "service" if self.spec.dashboard_shared else "user"
        controller = controller_cost(extra["upstream_detail"])
        if controller is not None:
            extra["controller"] = controller
        if proxy_counter is not None:
            detail = await proxy_counter.details()
            extra["proxy_stats"] = detail
            coalesced = int(detail.get("coalesced", 0))
        series = result.series if counter.source != "client" else _completions(result)
        return summary.summarize(
            result,
            upstream_requests=total,
            upstream_source=source,
            upstream_series=series,
            coalesced=coalesced,
            extra=extra,
        )


def controller_cost(detail: dict[str, Any]) -> dict[str, Any] | None:
    """The simulated controller's cost of a run, in all and per route, from
    ``/_sim/stats`` deltas (None when the upstream is not the simulator)."""
    if "busy_seconds" not in detail:
        return None
    counts: dict[str, int] = detail.get("by_route", {})
    busy: dict[str, float] = detail.get("busy_by_route", {})
    wait: dict[str, float] = detail.get("lock_wait_by_route", {})
    routes = {
        r: {
            "requests": int(counts.get(r, 0)),
            "busy_s": round(float(busy.get(r, 0.0)), 3),
            "lock_wait_s": round(float(wait.get(r, 0.0)), 3),
        }
        for r in sorted(set(counts) | set(busy))
        if counts.get(r) or busy.get(r)
    }
    return {
        "busy_s": round(float(detail["busy_seconds"]), 3),
        "lock_wait_s": round(float(detail.get("lock_wait_seconds", 0.0)), 3),
        "by_route": routes,
    }


def _labelled(
    on_tick: Callable[[str, Tick], None] | None, label: str
) -> Callable[[Tick], None] | None:
    if on_tick is None:
        return None
    return lambda t: on_tick(label, t)


def _completions(result: RunResult) -> list[tuple[float, int | None]]:
    """A running total of completed requests once a second (client-counted runs)."""
    ends = sorted(s.end for s in result.samples)
    out: list[tuple[float, int | None]] = [(0.0, 0)]
    t, i = 1.0, 0
    while t <= result.wall + 1.0:
        while i < len(ends) and ends[i] <= t:
            i += 1
        out.append((t, i))
        t += 1.0
    return out


def ordered_targets(targets: list[str]) -> list[str]:
    """Direct first (the baseline), then the caches, each once."""
    return [t for t in TARGETS if t in targets]
