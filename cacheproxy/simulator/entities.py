"""What the simulated cluster is made of: jobs, nodes, partitions,
reservations and the accounting records, Slurm's error numbers, the node
hardware, and Slurm's compressed host lists.

Apart from :mod:`model` (the cluster's state and the rules that change it)
because the renderers and the views read and build these records without
needing those rules; ``model.py`` keeps the one mutable whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

CORES_PER_SOCKET = 32
SOCKETS = 2
NODE_CPUS = CORES_PER_SOCKET * SOCKETS
NODE_MEMORY_MB = 131072
FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
JOB_NAMES = ("wrap", "train", "simulate", "analysis", "preprocess", "mpi_run", "bench", "align")
LICENSES = {"matlab": 50, "ansys": 20}
COLLECTIONS = ("jobs", "nodes", "partitions", "reservations", "licenses", "db")


class SimError(Exception):
    """A Slurm error: ``errno`` is Slurm's error number, ``message`` its text."""

    def __init__(self, errno: int, message: str, description: str = "") -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message
        self.description = description


INVALID_JOB_ID = (2017, "Invalid job id specified")
ACCESS_DENIED = (2002, "Access/permission denied")
INVALID_PARTITION = (2000, "Invalid partition name specified")
INVALID_NODE = (2018, "Invalid node name specified")
#: ESLURM_REST_INVALID_QUERY: slurmrestd maps it to 400 in 22.05, 422 from 23.02.
INVALID_QUERY = (9000, "Query empty or not RFC7320 compliant")
ALREADY_DONE = (2021, "Job/step already completing or completed")


@dataclass
class Job:
    job_id: int
    name: str
    user: str
    uid: int
    account: str
    partition: str
    qos: str
    state: str
    submit_time: int
    time_limit: int  # minutes
    cpus: int
    node_count: int
    start_time: int = 0
    end_time: int = 0
    nodes: list[str] = field(default_factory=list)
    reason: str = "None"
    priority: int = 1
    exit_code: int = 0
    array_job_id: int = 0
    array_task_id: int | None = None
    comment: str = ""
    licenses: str = ""
    cwd: str = "/tmp"
    std_out: str = ""
    script: str = ""
    #: Bumped on every change: keys the per-job render cache.
    version: int = 0
    #: Planned run length in seconds (set when the job is created).
    run_seconds: int = 600

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass
class Node:
    name: str
    partitions: list[str]
    alloc_cpus: int = 0
    alloc_memory: int = 0
    admin_state: str = ""  # "", "DRAIN", "DOWN"
    reason: str = ""
    reason_time: int = 0
    reason_user: str = ""
    boot_time: int = 0
    cpu_load: int = 0
    version: int = 0

    @property
    def base_state(self) -> str:
        if self.admin_state == "DOWN":
            return "DOWN"
        if self.alloc_cpus >= NODE_CPUS:
            return "ALLOCATED"
        if self.alloc_cpus > 0:
            return "MIXED"
        return "IDLE"

    @property
    def usable(self) -> bool:
        return self.admin_state == ""


@dataclass
class Partition:
    name: str
    nodes: list[str]
    default: bool = False
    max_time: int = 2880  # minutes
    state: str = "UP"


@dataclass
class Reservation:
    name: str
    nodes: list[str]
    start_time: int
    end_time: int
    users: str = ""
    accounts: str = ""
    flags: list[str] = field(default_factory=list)
    partition: str = ""


@dataclass
class Account:
    name: str
    description: str
    organization: str
    parent: str = "root"


@dataclass
class User:
    name: str
    uid: int
    default_account: str
    admin_level: str = "None"
    #: Accounts this user coordinates (``sacctmgr add coordinator``).
    coord_accounts: tuple[str, ...] = ()


@dataclass
class Association:
    id: int
    account: str
    user: str
    partition: str = ""
    parent: str = ""
    qos: list[str] = field(default_factory=lambda: ["normal"])
    shares: int = 1


@dataclass
class Qos:
    id: int
    name: str
    description: str
    priority: int = 0


def hostlist(names: Iterable[str]) -> str:
    """Compress ``cn001,cn002,cn003,cn007`` into ``cn[001-003,007]`` like Slurm."""
    names = list(names)
    if not names:
        return ""
    if len(names) == 1:
        return names[0]
    prefix = names[0].rstrip("0123456789")
    width = len(names[0]) - len(prefix)
    nums = sorted(int(n[len(prefix) :]) for n in names)
    ranges: list[str] = []
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        if start == prev:
            ranges.append(f"{start:0{width}d}")
        else:
            ranges.append(f"{start:0{width}d}-{prev:0{width}d}")
        if n is not None:
            start = prev = n
    return f"{prefix}[{','.join(ranges)}]"
