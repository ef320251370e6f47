"""The workload: which client asks what, and when, as a seeded timetable.

The timetable is built before a run starts and is the same for every target
(direct, proxy, nginx), so the targets face exactly the same offered load.
Arrivals are open loop: a request is due at its scheduled time whatever
happened to earlier ones, so a slow target cannot slow the load down and hide
its own latency (no coordinated omission).

The default mix is modelled on what loads a real slurmctld through
slurmrestd.  CLI tools (squeue, sinfo) do not use REST at all; REST traffic
comes from portals and dashboards (Slurm-web, Open OnDemand widgets, Grafana
panels) polling on a timer, from users' scripts and notebooks, and from the
occasional submit and cancel:

* ``dashboard``: every client has a cluster-status page open that refreshes
  every 5-30 s (a fixed period per client, a random phase) and fetches
  ``/jobs``, ``/nodes``, ``/partitions``, ``/reservations`` and slurmdb's
  ``/qos`` and ``/associations`` at once, like a browser (Slurm-web's
  dashboard reads these).  Portal backends talk to slurmrestd with one
  service account, so by default these requests carry the ``dashboard``
  account's credentials (``dashboard_shared``); this is where caching pays.
  Dashboards make over 95% of the requests: the rest is what users' own
  REST tools add, at rates per user of one squeue session per 6 minutes,
  one show-job per 15, one sinfo per 20 and one sacctmgr per 30, plus a
  site-wide 12 submits and 6 cancels a minute.
* ``squeue``: a user checks their jobs: a short burst of ``/jobs`` reads a
  second or two apart (people re-run squeue while waiting), own credentials.
* ``showjob``: ``/job/{id}`` on one of their jobs.
* ``sinfo``: ``/nodes`` and ``/partitions``.
* ``sacctmgr``: slurmdb association and account reads.
* ``submit`` and ``cancel``: writes at a site-wide rate, each wrapped in the
  reads a user does around it (squeue, submit, squeue; show job, scancel,
  show job): the read after the write checks read-your-writes.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

DASHBOARD = "dashboard"
SQUEUE = "squeue"
SHOWJOB = "showjob"
SINFO = "sinfo"
SACCT = "sacctmgr"
SUBMIT = "submit"
CANCEL = "cancel"
SCENARIOS = (DASHBOARD, SQUEUE, SHOWJOB, SINFO, SACCT, SUBMIT, CANCEL)
WRITES = frozenset({SUBMIT, CANCEL})


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Everything that shapes the offered load; defaults are ``cacheproxy bench``'s."""

    users: int = 200
    duration: float = 25.0
    """Seconds of scheduled arrivals per target (in-flight requests then drain)."""
    seed: int = 1
    api_version: str = "v0.0.43"
    dashboard_period: tuple[float, float] = (5.0, 30.0)
    """Each client's dashboard refresh period is drawn once from this range."""
    dashboard_paths: tuple[str, ...] = (
        "jobs",
        "nodes",
        "partitions",
        "reservations",
        "slurmdb/qos",
        "slurmdb/associations",
    )
    dashboard_shared: bool = True
    """Dashboards use one portal service account (True) or each user's own."""
    squeue_period: float = 360.0
    """Mean seconds between a user's squeue sessions (Poisson)."""
    squeue_burst: tuple[int, int] = (1, 4)
    """``/jobs`` reads per squeue session (uniform, inclusive)."""
    squeue_gap: tuple[float, float] = (1.0, 3.0)
    """Seconds between the reads of one squeue session."""
    showjob_period: float = 900.0
    sinfo_period: float = 1200.0
    sacctmgr_period: float = 1800.0
    submit_rate: float = 0.2
    """Submits per second, all users together (Poisson)."""
    cancel_rate: float = 0.1
    """Cancels per second, all users together; each cancels a job this run submitted."""
    writes: bool = True
    """False against a real cluster unless --allow-writes."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def with_users(self, users: int) -> WorkloadSpec:
        return replace(self, users=users)


@dataclass(frozen=True, slots=True)
class Arrival:
    """One scenario due at ``t`` seconds after the run starts, for one client."""

    t: float
    client: int
    scenario: str
    repeat: int = 0
    """Position within a squeue burst (0 for everything else)."""


@dataclass(slots=True)
class Timetable:
    spec: WorkloadSpec
    arrivals: list[Arrival] = field(default_factory=list)
    dashboard_periods: list[float] = field(default_factory=list)

    def count(self, scenario: str) -> int:
        return sum(1 for a in self.arrivals if a.scenario == scenario)

    def offered_requests(self) -> int:
        """Requests the timetable asks for (writes count with their reads)."""
        per = {
            DASHBOARD: len(self.spec.dashboard_paths),
            SQUEUE: 1,
            SHOWJOB: 1,
            SINFO: 2,
            SACCT: 2,
            SUBMIT: 3,
            CANCEL: 3,
        }
        return sum(per[a.scenario] for a in self.arrivals)


def _poisson(rng: random.Random, rate: float, duration: float) -> list[float]:
    """Arrival times of a Poisson process of ``rate`` per second over ``duration``."""
    times: list[float] = []
    if rate <= 0:
        return times
    t = rng.expovariate(rate)
    while t < duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def build_timetable(spec: WorkloadSpec) -> Timetable:
    """The seeded timetable of ``spec``: identical for every target."""
    rng = random.Random(spec.seed)
    tt = Timetable(spec)
    out = tt.arrivals
    lo, hi = spec.dashboard_period
    for client in range(spec.users):
        period = rng.uniform(lo, hi)
        tt.dashboard_periods.append(period)
        t = rng.uniform(0.0, period)
        while t < spec.duration:
            out.append(Arrival(t, client, DASHBOARD))
            t += period
        for t in _poisson(rng, 1.0 / spec.squeue_period, spec.duration):
            burst = rng.randint(*spec.squeue_burst)
            at = t
            for i in range(burst):
                if at >= spec.duration:
                    break
                out.append(Arrival(at, client, SQUEUE, i))
                at += rng.uniform(*spec.squeue_gap)
        for scenario, period in (
            (SHOWJOB, spec.showjob_period),
            (SINFO, spec.sinfo_period),
            (SACCT, spec.sacctmgr_period),
        ):
            out.extend(
                Arrival(t, client, scenario) for t in _poisson(rng, 1.0 / period, spec.duration)
            )
    if spec.writes and spec.users > 0:
        for t in _poisson(rng, spec.submit_rate, spec.duration):
            out.append(Arrival(t, rng.randrange(spec.users), SUBMIT))
        # Cancels start once there is something to cancel.
        for t in _poisson(rng, spec.cancel_rate, spec.duration):
            out.append(Arrival(t, rng.randrange(spec.users), CANCEL))
    out.sort(key=lambda a: (a.t, a.client, a.scenario, a.repeat))
    return tt
