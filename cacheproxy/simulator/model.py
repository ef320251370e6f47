"""The simulated cluster: jobs, nodes, partitions, reservations and accounting.

Version-neutral state only (its records are defined in ``entities.py``, its
starting population in ``seed.py``); ``render_*`` modules turn it into each
API version's shapes.  Every change bumps a per-collection generation (for
the render caches) and a per-collection change time (for ``update_time``).

Jobs live like real ones: they start PENDING, the "scheduler" starts them when
nodes have room, they end COMPLETED (sometimes FAILED or TIMEOUT), and a
finished job is replaced by a fresh pending one so the population stays near
the configured size (slurmctld forgets old jobs after MinJobAge).  Time passes
only through :meth:`Cluster.advance`, called before each request, so nothing
runs in the background and tests can move the clock explicitly.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

from cacheproxy.simulator import seed
from cacheproxy.simulator.config import SimConfig
from cacheproxy.simulator.entities import (
    ACCESS_DENIED,
    COLLECTIONS,
    INVALID_JOB_ID,
    INVALID_NODE,
    INVALID_PARTITION,
    JOB_NAMES,
    LICENSES,
    NODE_CPUS,
    Account,
    Association,
    Job,
    Node,
    Partition,
    Qos,
    Reservation,
    SimError,
    User,
)


class Cluster:
    """All mutable state, with the rules that change it."""

    def __init__(self, config: SimConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        now = self.now()
        self.start_time = now
        self.gen: dict[str, int] = dict.fromkeys(COLLECTIONS, 1)
        self.changed: dict[str, int] = dict.fromkeys(COLLECTIONS, now)
        self.jobs: dict[int, Job] = {}
        self.history: dict[int, Job] = {}
        self.nodes: dict[str, Node] = {}
        self.partitions: dict[str, Partition] = {}
        self.reservations: dict[str, Reservation] = {}
        self.users: dict[str, User] = {}
        self.accounts: dict[str, Account] = {}
        self.associations: list[Association] = []
        self.qos: dict[str, Qos] = {}
        self.next_job_id = 1000
        self.next_assoc_id = 1
        self.last_backfill = now
        self.jobs_submitted = 0
        self.jobs_started = 0
        self.jobs_completed = 0
        self.jobs_canceled = 0
        self.jobs_failed = 0
        self._events: list[tuple[float, int, int, str]] = []
        self._event_seq = 0
        seed.populate(self, now)

    # ------------------------------------------------------------------ time
    def now(self) -> int:
        return int(self.clock())

    def touch(self, *collections: str) -> None:
        """Record a change: new generation and change time for each collection."""
        now = self.now()
        for c in collections:
            self.gen[c] += 1
            self.changed[c] = now

    def advance(self) -> None:
        """Apply every job event due by now (starts, ends, replacements)."""
        now_f = self.clock()
        touched = False
        while self._events and self._events[0][0] <= now_f:
            _, _, job_id, kind = heapq.heappop(self._events)
            job = self.jobs.get(job_id)
            if job is None:
                continue
            if kind == "start" and job.state == "PENDING":
                touched |= self._try_start(job)
            elif kind == "end" and job.state == "RUNNING":
                self._finish(job, self._final_state())
                self._replace_finished()
                touched = True
        if touched:
            self.last_backfill = self.now()
            self.touch("jobs", "nodes", "licenses", "db")

    def schedule(self, job: Job, kind: str, delay_s: float) -> None:
        """Queue a job event ("start"/"end") ``delay_s`` of job time from now."""
        if self.config.job_speed <= 0:
            return
        self._event_seq += 1
        at = self.clock() + delay_s / self.config.job_speed
        heapq.heappush(self._events, (at, self._event_seq, job.job_id, kind))

    def _final_state(self) -> str:
        r = self.rng.random()
        return "FAILED" if r < 0.05 else "TIMEOUT" if r < 0.08 else "COMPLETED"

    # ---------------------------------- new records (seed.py and the writes)
    def add_assoc(self, account: str, user: str, parent: str = "") -> Association:
        """A new association with the next id (sacctmgr add account/user)."""
        a = Association(id=self.next_assoc_id, account=account, user=user, parent=parent)
        self.next_assoc_id += 1
        self.associations.append(a)
        return a

    def pick_user(self) -> User:
        """A random non-root user: the owner of a made-up job."""
        names = [u for u in self.users if u != "root"] or ["root"]
        return self.users[self.rng.choice(names)]

    def new_job(self, now: int, user: User, state: str, partition: str | None = None) -> Job:
        """A job with the next id and a random shape, recorded in the queue and history."""
        rng = self.rng
        part = (
            partition
            or rng.choices(
                [p for p in self.partitions], weights=[6, 2, 1, 1][: len(self.partitions)]
            )[0]
        )
        node_count = rng.choices([1, 2, 4], weights=[90, 7, 3])[0]
        cpus = (
            node_count * NODE_CPUS
            if node_count > 1
            else rng.choices([1, 2, 4, 8, 16, 32, 64], weights=[20, 15, 20, 15, 15, 10, 5])[0]
        )
        job = Job(
            job_id=self.next_job_id,
            name=rng.choice(JOB_NAMES),
            user=user.name,
            uid=user.uid,
            account=user.default_account,
            partition=part,
            qos=rng.choices(["normal", "high", "low"], weights=[8, 1, 1])[0],
            state=state,
            submit_time=now,
            time_limit=rng.choice([30, 60, 120, 240, 720, 1440]),
            cpus=cpus,
            node_count=node_count,
            priority=rng.randint(100, 20000),
            cwd=f"/home/{user.name}",
            std_out=f"/home/{user.name}/slurm-%j.out",
            licenses=rng.choice(["", "", "", "", "", "", "", "", "matlab:1", "ansys:2"]),
        )
        job.run_seconds = rng.randint(60, 1800)
        self.next_job_id += 1
        self.jobs[job.job_id] = job
        self.history[job.job_id] = job
        return job

    # ----------------------------------------------------------- scheduling
    def allocate(self, job: Job) -> bool:
        """Place a job on free cores of its partition; False when it does not fit."""
        part = self.partitions.get(job.partition)
        if part is None:
            return False
        per_node = max(1, job.cpus // job.node_count)
        free = [
            n
            for n in (self.nodes[x] for x in part.nodes)
            if n.usable and NODE_CPUS - n.alloc_cpus >= per_node
        ]
        if len(free) < job.node_count:
            return False
        chosen = self.rng.sample(free, k=job.node_count)
        for n in chosen:
            n.alloc_cpus += per_node
            n.alloc_memory += per_node * 512
            n.cpu_load = min(NODE_CPUS * 100, n.alloc_cpus * 100)
            n.version += 1
        job.nodes = sorted(n.name for n in chosen)
        return True

    def _release(self, job: Job) -> None:
        per_node = max(1, job.cpus // max(1, job.node_count))
        for name in job.nodes:
            n = self.nodes.get(name)
            if n is None:
                continue
            n.alloc_cpus = max(0, n.alloc_cpus - per_node)
            n.alloc_memory = max(0, n.alloc_memory - per_node * 512)
            n.cpu_load = n.alloc_cpus * 100
            n.version += 1

    def _try_start(self, job: Job) -> bool:
        if not self.allocate(job):
            job.reason = "Resources"
            job.version += 1
            self.schedule(job, "start", self.rng.uniform(30, 300))
            return True
        now = self.now()
        job.state = "RUNNING"
        job.reason = "None"
        job.start_time = now
        job.end_time = now + job.time_limit * 60
        job.version += 1
        self.jobs_started += 1
        self.schedule(job, "end", job.run_seconds)
        return True

    def _finish(self, job: Job, state: str) -> None:
        now = self.now()
        was_running = job.state == "RUNNING"
        if was_running:
            self._release(job)
        elif state == "CANCELLED":
            job.nodes = []
        job.state = state
        job.reason = "None"
        job.end_time = now
        if not was_running:
            job.start_time = job.start_time or 0
        job.exit_code = 0 if state == "COMPLETED" else 1 if state == "FAILED" else 0
        job.version += 1
        if state == "CANCELLED":
            self.jobs_canceled += 1
        elif state == "FAILED":
            self.jobs_failed += 1
        else:
            self.jobs_completed += 1

    def _replace_finished(self) -> None:
        """Keep the population steady: a new job arrives, the oldest finished is purged."""
        job = self.new_job(self.now(), self.pick_user(), "PENDING")
        job.reason = "Priority"
        self.jobs_submitted += 1
        self.schedule(job, "start", self.rng.uniform(5, 120))
        if len(self.jobs) > self.config.jobs:
            done = [j for j in self.jobs.values() if j.finished]
            if done:
                oldest = min(done, key=lambda j: j.end_time)
                del self.jobs[oldest.job_id]
        if len(self.history) > 2 * max(1, self.config.jobs):
            del self.history[next(iter(self.history))]

    # ------------------------------------------------------------- queries
    def visible_jobs(self, viewer: str | None) -> list[Job]:
        """Jobs a viewer (:meth:`viewer_for`) may see."""
        if viewer is None:
            return list(self.jobs.values())
        return [j for j in self.jobs.values() if self.job_visible(viewer, j)]

    def job_visible(self, viewer: str | None, job: Job) -> bool:
        """PrivateData=jobs: own jobs and jobs of accounts the viewer coordinates.

        slurmctld's ``_hide_job_user_rec`` (src/slurmctld/job_mgr.c, 22.05 to
        25.11, without MCS) and slurmdbd's ``_cluster_get_jobs``
        (as_mysql_jobacct_process.c): ``job.user_id == uid`` or
        ``assoc_mgr_is_user_acct_coord(uid, job.account)``.
        """
        if viewer is None or job.user == viewer:
            return True
        return job.account in self.coordinated(viewer)

    def viewer_for(self, user: str) -> str | None:
        """The visibility key for a user's jobs: ``None`` means "sees every job"."""
        if not self.config.private("jobs") or self.privileged(user):
            return None
        return user

    def is_admin(self, user: str) -> bool:
        u = self.users.get(user)
        return user == "root" or (u is not None and u.admin_level == "Administrator")

    def privileged(self, user: str) -> bool:
        """``validate_operator`` (src/slurmctld/proc_req.c): root, SlurmUser or
        AdminLevel Operator/Administrator; PrivateData never hides anything from them."""
        u = self.users.get(user)
        return user in ("root", "slurm") or (
            u is not None and u.admin_level in ("Operator", "Administrator")
        )

    def coordinated(self, user: str) -> frozenset[str]:
        u = self.users.get(user)
        return frozenset(u.coord_accounts) if u else frozenset()

    def user_accounts(self, user: str) -> frozenset[str]:
        """Accounts the user has an association in."""
        return frozenset(a.account for a in self.associations if a.user == user)

    def find_jobs(self, job_id: int, task: int | None = None) -> list[Job]:
        """``job_id`` alone matches a job or every task of an array; with ``task``, one task."""
        found = [
            j
            for j in self.jobs.values()
            if (j.job_id == job_id and task is None)
            or (j.array_job_id == job_id and (task is None or j.array_task_id == task))
        ]
        return found

    def uid_of(self, user: str) -> int:
        u = self.users.get(user)
        return u.uid if u else 65534

    def account_of(self, user: str) -> str:
        u = self.users.get(user)
        return u.default_account if u else "root"

    def licenses_in_use(self) -> dict[str, int]:
        used = dict.fromkeys(LICENSES, 0)
        for j in self.jobs.values():
            if j.state == "RUNNING" and j.licenses:
                name, _, count = j.licenses.partition(":")
                if name in used:
                    used[name] += int(count or 1)
        return used

    # ------------------------------------------------------------ mutations
    def submit(
        self,
        user: str,
        *,
        name: str,
        partition: str | None,
        cpus: int,
        node_count: int,
        time_limit: int | None,
        cwd: str,
        script: str,
        account: str | None = None,
        qos: str | None = None,
    ) -> Job:
        if partition is not None and partition not in self.partitions:
            raise SimError(*INVALID_PARTITION)
        u = self.users.get(user) or User(user, self.uid_of(user), self.account_of(user))
        job = self.new_job(self.now(), u, "PENDING", partition=partition or self.default_partition)
        job.name = name or "wrap"
        job.cpus = max(1, cpus)
        job.node_count = max(1, node_count)
        if time_limit:
            job.time_limit = time_limit
        job.cwd = cwd or "/"
        job.std_out = f"{job.cwd.rstrip('/')}/slurm-%j.out"
        job.script = script
        job.account = account or job.account
        job.qos = qos or "normal"
        job.licenses = ""
        job.reason = "None"
        self.jobs_submitted += 1
        self.schedule(job, "start", self.rng.uniform(1, 10))
        self.touch("jobs", "db")
        return job

    @property
    def default_partition(self) -> str:
        return next(p.name for p in self.partitions.values() if p.default)

    def _owned(self, job: Job, actor: str) -> None:
        if job.user != actor and not self.is_admin(actor):
            raise SimError(*ACCESS_DENIED)

    def cancel(self, job_id: int, actor: str, task: int | None = None) -> list[Job]:
        jobs = self.find_jobs(job_id, task)
        if not jobs:
            raise SimError(*INVALID_JOB_ID, description=f"Unable to find JobId={job_id}")
        for j in jobs:
            self._owned(j, actor)
        for j in jobs:
            if not j.finished:
                self._finish(j, "CANCELLED")
        self.touch("jobs", "nodes", "licenses", "db")
        return jobs

    def cancel_many(
        self, actor: str, *, job_ids: list[int] | None = None, user: str | None = None
    ) -> list[Job]:
        """``DELETE /jobs``: signal every matching job the actor may signal."""
        hit = []
        for j in list(self.jobs.values()):
            if job_ids is not None and j.job_id not in job_ids and j.array_job_id not in job_ids:
                continue
            if user is not None and j.user != user:
                continue
            if j.user != actor and not self.is_admin(actor):
                continue
            if not j.finished:
                self._finish(j, "CANCELLED")
                hit.append(j)
        if hit:
            self.touch("jobs", "nodes", "licenses", "db")
        return hit

    def update_job(self, job_id: int, actor: str, changes: dict[str, object]) -> Job:
        jobs = self.find_jobs(job_id)
        if not jobs:
            raise SimError(*INVALID_JOB_ID, description=f"Unable to find JobId={job_id}")
        job = jobs[0]
        self._owned(job, actor)
        for key in ("name", "comment"):
            if isinstance(changes.get(key), str):
                setattr(job, key, changes[key])
        tl = changes.get("time_limit")
        if isinstance(tl, dict):
            tl = tl.get("number")
        if isinstance(tl, int) and tl > 0:
            job.time_limit = tl
            if job.start_time:
                job.end_time = job.start_time + tl * 60
        prio = changes.get("priority")
        if isinstance(prio, dict):
            prio = prio.get("number")
        if isinstance(prio, int):
            if not self.is_admin(actor):
                raise SimError(*ACCESS_DENIED)
            job.priority = prio
        part = changes.get("partition")
        if isinstance(part, str) and part:
            if part not in self.partitions:
                raise SimError(*INVALID_PARTITION)
            job.partition = part
        job.version += 1
        self.touch("jobs", "db")
        return job

    def update_node(self, name: str, actor: str, state: str | None, reason: str | None) -> Node:
        node = self.nodes.get(name)
        if node is None:
            raise SimError(*INVALID_NODE)
        if not self.is_admin(actor):
            raise SimError(*ACCESS_DENIED)
        if state:
            s = state.upper()
            if s in ("DRAIN", "DOWN"):
                node.admin_state = s
                node.reason = reason or "simulated"
                node.reason_time = self.now()
                node.reason_user = actor
            elif s in ("RESUME", "IDLE", "UNDRAIN"):
                node.admin_state = ""
                node.reason = ""
                node.reason_time = 0
                node.reason_user = ""
        elif reason is not None:
            node.reason = reason
        node.version += 1
        self.touch("nodes", "partitions")
        return node

    def create_reservation(self, actor: str, res: Reservation) -> Reservation:
        if not self.is_admin(actor):
            raise SimError(*ACCESS_DENIED)
        self.reservations[res.name] = res
        self.touch("reservations", "nodes")
        return res

    def delete_reservation(self, actor: str, name: str) -> None:
        if not self.is_admin(actor):
            raise SimError(*ACCESS_DENIED)
        if name not in self.reservations:
            raise SimError(2050, "Requested reservation is invalid")
        del self.reservations[name]
        self.touch("reservations", "nodes")

    def reconfigure(self, actor: str) -> None:
        if not self.is_admin(actor):
            raise SimError(*ACCESS_DENIED)
        self.touch("jobs", "nodes", "partitions", "reservations", "licenses")

    # --------------------------------------------------------- accounting
    def _admin_only(self, actor: str) -> None:
        if not self.is_admin(actor):
            raise SimError(*ACCESS_DENIED)

    def add_accounts(self, actor: str, accounts: list[Account]) -> None:
        self._admin_only(actor)
        for a in accounts:
            if a.name not in self.accounts:
                self.accounts[a.name] = a
                self.add_assoc(a.name, "", parent=a.parent or "root")
        self.touch("db")

    def add_users(self, actor: str, users: list[User]) -> None:
        self._admin_only(actor)
        for u in users:
            if u.name not in self.users:
                self.users[u.name] = u
                if u.default_account in self.accounts:
                    self.add_assoc(u.default_account, u.name)
        self.touch("db")

    def add_associations(self, actor: str, pairs: list[tuple[str, str, str]]) -> None:
        self._admin_only(actor)
        for account, user, partition in pairs:
            if account not in self.accounts:
                raise SimError(3000, "Unknown account", f"Account {account} does not exist")
            if not any(
                a.account == account and a.user == user and a.partition == partition
                for a in self.associations
            ):
                self.add_assoc(account, user).partition = partition
        self.touch("db")

    def add_qos(self, actor: str, items: list[Qos]) -> None:
        self._admin_only(actor)
        for q in items:
            if q.name not in self.qos:
                q.id = max((x.id for x in self.qos.values()), default=0) + 1
                self.qos[q.name] = q
        self.touch("db")

    def delete_account(self, actor: str, name: str) -> list[str]:
        self._admin_only(actor)
        if name not in self.accounts or name == "root":
            return []
        del self.accounts[name]
        self.associations = [a for a in self.associations if a.account != name]
        self.touch("db")
        return [name]

    def delete_user(self, actor: str, name: str) -> list[str]:
        self._admin_only(actor)
        if name not in self.users or name == "root":
            return []
        del self.users[name]
        self.associations = [a for a in self.associations if a.user != name]
        self.touch("db")
        return [name]

    def advance_clock_hint(self) -> float | None:
        """Seconds until the next job event (for tests and ``/_sim/advance``)."""
        if not self._events:
            return None
        return max(0.0, self._events[0][0] - self.clock())
