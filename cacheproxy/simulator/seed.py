"""The starting population of a simulated cluster: QOS, accounts, users and
their associations, nodes and partitions (a few out of service), jobs in
every state (some in small arrays), and two reservations.

Apart from ``model.py`` because it is made-up data chosen once, from the
configuration and the seeded random generator, while ``model.py`` holds the
rules a running cluster follows; it builds through those rules
(``new_job``, ``schedule``, ``allocate``, ``add_assoc``) so a seeded job is
like any other.
"""

from __future__ import annotations

import random
from typing import Protocol

from cacheproxy.simulator.config import SimConfig
from cacheproxy.simulator.entities import (
    Account,
    Association,
    Job,
    Node,
    Partition,
    Qos,
    Reservation,
    User,
)


class Cluster(Protocol):
    """What seeding needs of :class:`cacheproxy.simulator.model.Cluster`
    (a protocol, so that the model imports this module and not the reverse)."""

    config: SimConfig
    rng: random.Random
    jobs_submitted: int
    qos: dict[str, Qos]
    accounts: dict[str, Account]
    users: dict[str, User]
    nodes: dict[str, Node]
    partitions: dict[str, Partition]
    reservations: dict[str, Reservation]

    def add_assoc(self, account: str, user: str, parent: str = "") -> Association: ...

    def pick_user(self) -> User: ...

    def new_job(self, now: int, user: User, state: str, partition: str | None = None) -> Job: ...

    def schedule(self, job: Job, kind: str, delay_s: float) -> None: ...

    def allocate(self, job: Job) -> bool: ...


def populate(c: Cluster, now: int) -> None:
    """Fill an empty cluster."""
    _accounting(c)
    _nodes(c, now)
    _jobs(c, now)
    _reservations(c, now)


def _accounting(c: Cluster) -> None:
    for i, (name, desc) in enumerate(
        [("normal", "Normal QOS default"), ("high", "High priority"), ("low", "Scavenger")],
        start=1,
    ):
        c.qos[name] = Qos(id=i, name=name, description=desc, priority=[0, 100, 0][i - 1])
    c.accounts["root"] = Account("root", "default root account", "root", parent="")
    for i in range(1, 11):
        name = f"acct{i:02d}"
        c.accounts[name] = Account(name, f"project {name}", f"org{(i - 1) // 3 + 1}")
    c.add_assoc("root", "")
    c.add_assoc("root", "root")
    for a in c.accounts:
        if a != "root":
            c.add_assoc(a, "", parent="root")
    names = sorted(c.config.users)
    for idx, name in enumerate(names):
        if name == "root":
            c.users[name] = User("root", 0, "root", admin_level="Administrator")
            continue
        uid = 1000 + int(name[4:]) if name.startswith("user") and name[4:].isdigit() else 2000 + idx
        account = f"acct{(uid % 10) + 1:02d}"
        level = "Operator" if name in c.config.operators else "None"
        coords = tuple(c.config.coordinators.get(name, ()))
        c.users[name] = User(name, uid, account, admin_level=level, coord_accounts=coords)
        c.add_assoc(account, name)


def _nodes(c: Cluster, now: int) -> None:
    n = max(1, c.config.nodes)
    names = [f"cn{i:03d}" for i in range(1, n + 1)]
    gpu_count = max(1, n // 10) if n >= 4 else 0
    compute = names[: n - gpu_count] if gpu_count else names
    gpu = names[n - gpu_count :] if gpu_count else []
    c.partitions["normal"] = Partition("normal", compute, default=True, max_time=2880)
    c.partitions["long"] = Partition("long", compute[: max(1, len(compute) // 4)], max_time=10080)
    if gpu:
        c.partitions["gpu"] = Partition("gpu", gpu, max_time=1440)
    c.partitions["debug"] = Partition("debug", names[: min(4, n)], max_time=30)
    for name in names:
        parts = [p.name for p in c.partitions.values() if name in set(p.nodes)]
        c.nodes[name] = Node(name, parts, boot_time=now - 86400 * 7)
    # A few nodes out of service, as on any real cluster.
    for name in c.rng.sample(names, k=min(len(names), max(0, n // 100))):
        node = c.nodes[name]
        node.admin_state = c.rng.choice(["DRAIN", "DOWN"])
        node.reason = "hardware check" if node.admin_state == "DRAIN" else "Not responding"
        node.reason_time = now - 3600
        node.reason_user = "root"


def _jobs(c: Cluster, now: int) -> None:
    rng = c.rng
    states = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"]
    weights = [20, 35, 35, 4, 3, 3]
    created = 0
    while created < c.config.jobs:
        state = rng.choices(states, weights=weights)[0]
        user = c.pick_user()
        # About 1 job in 20 belongs to a small job array.
        tasks = rng.randint(3, 8) if rng.random() < 0.02 else 1
        tasks = min(tasks, c.config.jobs - created)
        first: Job | None = None
        for t in range(tasks):
            job = c.new_job(now - rng.randint(60, 86400), user, state)
            if tasks > 1:
                first = first or job
                job.array_job_id = first.job_id
                job.array_task_id = t
                job.name = first.name
                job.partition = first.partition
            _place(c, job, now)
            created += 1
    c.jobs_submitted = created


def _place(c: Cluster, job: Job, now: int) -> None:
    rng = c.rng
    if job.state == "PENDING":
        job.reason = rng.choice(["Priority", "Resources", "Priority", "Dependency"])
        c.schedule(job, "start", rng.uniform(5, 300))
        return
    if job.state == "RUNNING":
        if not c.allocate(job):
            job.state = "PENDING"
            job.reason = "Resources"
            c.schedule(job, "start", rng.uniform(30, 600))
            return
        job.start_time = max(job.submit_time, now - rng.randint(10, 3600))
        job.end_time = job.start_time + job.time_limit * 60
        c.schedule(job, "end", rng.uniform(10, job.run_seconds))
        return
    job.start_time = job.submit_time + rng.randint(0, 600)
    job.end_time = min(now - 1, job.start_time + rng.randint(10, job.run_seconds))
    job.end_time = max(job.end_time, job.start_time)
    job.exit_code = 0 if job.state == "COMPLETED" else 1
    pool = c.partitions[job.partition].nodes
    job.nodes = sorted(rng.sample(pool, k=min(job.node_count, len(pool))))
    if job.state == "CANCELLED" and rng.random() < 0.5:
        job.start_time = 0
        job.nodes = []


def _reservations(c: Cluster, now: int) -> None:
    names = list(c.nodes)
    c.reservations["maint"] = Reservation(
        "maint",
        names[-min(4, len(names)) :],
        start_time=now + 86400,
        end_time=now + 86400 + 4 * 3600,
        users="root",
        flags=["MAINT", "SPEC_NODES"],
    )
    c.reservations["training"] = Reservation(
        "training",
        names[: min(2, len(names))],
        start_time=now - 3600,
        end_time=now + 7 * 86400,
        accounts="acct01",
        flags=["SPEC_NODES"],
        partition="normal",
    )
