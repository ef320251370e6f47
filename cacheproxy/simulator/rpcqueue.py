"""slurmctld's RPC queues with ``hard_drop`` (24.05 on), as slurmrestd's clients see them.

With ``SlurmctldParameters=enable_rpc_queue`` slurmctld hands the read RPCs
it queues (``REQUEST_JOB_INFO``, ``REQUEST_JOB_INFO_SINGLE``,
``REQUEST_NODE_INFO``, ``REQUEST_PARTITION_INFO``, among others; the
``slurmctld_rpcs`` table in src/slurmctld/proc_req.c) to one thread per RPC
type.  ``rpc_queue.yaml`` may bound a queue (``max_queued``); an RPC over
the bound is answered ``SLURMCTLD_COMMUNICATIONS_BACKOFF``, or with
``hard_drop: true`` ``SLURMCTLD_COMMUNICATIONS_HARD_DROP`` (1805, "Rate
limit exceeded, please retry later"; commit f48ad9a33a, first in 24.05.0).
libslurm retries only BACKOFF, so a hard drop reaches slurmrestd's
handler, which reports it; no release maps 1805 to a status
(operations.c up to 25.05, ``http_status_errors`` in src/common/http.c from
25.11), so the client gets **500** with that error.

Here a queue's length is the number of its RPCs in the simulated controller
(waiting for the lock or holding it): an approximation of slurmctld's count
of RPCs enqueued and not yet processed.  ``/_sim/stats`` counts the drops.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: The operation -> the RPC type whose queue it enters (a single node,
#: ``REQUEST_NODE_INFO_SINGLE``, is not queued).
QUEUED = {
    "jobs": "REQUEST_JOB_INFO",
    "job": "REQUEST_JOB_INFO_SINGLE",
    "nodes": "REQUEST_NODE_INFO",
    "partitions": "REQUEST_PARTITION_INFO",
    "partition": "REQUEST_PARTITION_INFO",
}
#: The first release with ``SLURMCTLD_COMMUNICATIONS_HARD_DROP``.
SINCE = (24, 5, 0)
HARD_DROP = 1805
HARD_DROP_TEXT = "Rate limit exceeded, please retry later"

#: What each handler says when its RPC failed (src/slurmrestd/plugins/openapi/
#: slurmctld/*.c in 24.05): the source, then the description ({} the name).
FAILURE = {
    "jobs": ("slurm_load_jobs()", "Unable to query jobs"),
    "job": ("_handle_job_get", "Unable to query JobId={}"),
    "nodes": ("_dump_nodes", "Failure to query nodes"),
    "partitions": ("op_handler_partitions", "Unable to query partitions"),
    "partition": ("op_handler_partition", "Unable to query partitions"),
}


@dataclass
class RpcQueues:
    max_queued: int
    dropped: int = 0
    _queued: Counter[str] = field(default_factory=Counter)

    def enter(self, operation: str, release: tuple[int, int, int]) -> str | None:
        """Queue ``operation``'s RPC: its queue's name, None when not queued,
        or ``""`` when the queue is full and slurmctld drops it."""
        rpc = QUEUED.get(operation)
        if rpc is None or release < SINCE:
            return None
        if self._queued[rpc] >= self.max_queued:
            self.dropped += 1
            return ""
        self._queued[rpc] += 1
        return rpc

    def leave(self, rpc: str) -> None:
        self._queued[rpc] -= 1
