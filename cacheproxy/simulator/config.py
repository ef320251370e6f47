"""Configuration of the simulated slurmrestd: one frozen value shared by every module.

Kept separate from the CLI so tests build a simulator in-process with the same
defaults the command line uses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cacheproxy.simulator import privatedata
from cacheproxy.simulator.releases import (
    DEFAULT_MAX_CONNECTIONS,
    RELEASES,
    STYLES,
    Release,
    style_map,
)

#: A Slurm release ("22.05" ... "26.05"), "all" or the alias "25.x" (see releases.py).
Style = str
CostModelName = Literal["realistic", "none"]


def default_users() -> dict[str, str]:
    """``root`` and ``user001``..``user100``, token ``sim-token-<user>`` (the contract)."""
    users = {"root": "sim-token-root"}
    for i in range(1, 101):
        name = f"user{i:03d}"
        users[name] = f"sim-token-{name}"
    return users


def load_users_file(path: str | Path) -> dict[str, str]:
    """Read a ``{"user": "token"}`` JSON object; ``root`` is added if missing."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a JSON object of user -> token strings")
    users = dict(data)
    users.setdefault("root", "sim-token-root")
    return users


@dataclass(frozen=True)
class CostParams:
    """Service-time model of a real 22.05 slurmrestd + slurmctld (see ``cost.py``).

    Defaults are calibrated with ``benchmarks/simulator_calibration.py``.
    """

    #: Mean time a read holds the controller lock, seconds.
    read_base: float = 0.0017
    #: Extra controller time per item returned (job, node, ...), seconds.
    ctld_per_item: float = 1e-6
    #: slurmrestd-side rendering time per item (outside the lock, limited threads).
    render_per_item: float = 4e-6
    #: Mean time a write holds the lock exclusively, seconds.
    write_base: float = 0.0026
    #: Readers that may hold the lock together (slurmctld serialises most work).
    read_parallelism: int = 1
    #: slurmrestd worker threads that render responses in parallel.
    render_threads: int = 2
    #: Log-normal sigma of the per-request jitter (mean kept at 1).
    jitter_sigma: float = 0.35
    #: Service slows by up to this fraction when many requests wait (lock contention).
    contention: float = 0.7
    #: Extra delay of a request whose token slurmctld rejects (about 12 ms on 22.05).
    auth_reject_delay: float = 0.010
    #: slurmdbd requests that may run together.
    dbd_parallelism: int = 4
    #: Multiplies the slurmdbd service times (90 ms to 1.3 s at 1.0).
    dbd_scale: float = 1.0


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes one simulated cluster and daemon."""

    host: str = "127.0.0.1"
    port: int = 0
    jobs: int = 2000
    nodes: int = 500
    users: dict[str, str] = field(default_factory=default_users)
    #: ``PrivateData`` words (privatedata.WORDS); a string ("jobs,nodes") or
    #: ``True`` (the old boolean: jobs) is normalised to the set.
    private_data: frozenset[str] | str | bool = frozenset()
    #: Users with AdminLevel=Operator: like root, they see everything.
    operators: frozenset[str] = frozenset()
    #: user -> the accounts they coordinate (sacctmgr add coordinator).
    coordinators: dict[str, tuple[str, ...]] = field(default_factory=dict)
    style: Style = "all"
    cost_model: CostModelName = "realistic"
    seed: int = 0
    #: Job life speed: 1.0 = real durations (minutes), 0 = frozen clock for jobs.
    job_speed: float = 1.0
    cluster_name: str = "simcluster"
    #: Write slurmrestd's reason phrases ("304 NOT MODIFIED"), not the standard ones.
    #: Process-wide, so only enabled where the simulator owns the process.
    exact_status_lines: bool = False
    cost: CostParams = field(default_factory=CostParams)
    #: ``SlurmctldParameters=rl_enable`` (23.02 on; see ``ratelimit.py``).
    rate_limit: bool = False
    rl_bucket_size: int = 30
    #: Tokens per second (``rl_refill_rate`` per ``rl_refill_period=1``).
    rl_refill_rate: float = 2.0
    #: rpc_queue.yaml ``max_queued`` with ``hard_drop: true`` (24.05 on; 0: no
    #: rpc queue; see ``rpcqueue.py``).
    rpc_queue_hard_drop: int = 0
    #: slurmrestd's open-connection limit: at it, accept() waits (``server.py``).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: slurmrestd's ``-t``: requests handled at once (0: the release's default).
    threads: int = 0

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; expected one of {', '.join(STYLES)}")
        object.__setattr__(self, "private_data", privatedata.parse(self.private_data))
        object.__setattr__(self, "operators", frozenset(self.operators))

    def private(self, word: str) -> bool:
        """Whether ``PrivateData`` has ``word`` (one of privatedata.WORDS)."""
        assert word in privatedata.WORDS, word
        words = self.private_data
        assert isinstance(words, frozenset)
        return word in words

    @property
    def served(self) -> dict[str, Release]:
        """API version -> the release whose behaviour it has (see ``releases.style_map``)."""
        return style_map(self.style)

    @property
    def worker_threads(self) -> int:
        """Requests the daemon handles at once: ``threads``, else its release's
        default on this host's CPUs; ``all``/``25.x`` (no one release) take 20,
        the ``-t`` default through 24.11."""
        if self.threads > 0:
            return self.threads
        release = RELEASES.get(self.style)
        return release.default_threads(len(os.sched_getaffinity(0))) if release else 20

    @property
    def versions(self) -> frozenset[str]:
        return frozenset(self.served)
