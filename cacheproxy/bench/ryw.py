"""Read-your-writes bookkeeping.

The promise checked: once a client's own submit or cancel has returned, that
client's next read shows it: the new job id is in ``/jobs``, the cancelled
job's state says CANCELLED.  A cache that keeps serving the pre-write answer
breaks it; each such read is a violation.  A verify read that fails outright
(an error status, no response) proves nothing either way: it is counted as
unjudged, and as an error by the run's summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cacheproxy.bench import slurmapi

MAX_DETAILS = 20


@dataclass(slots=True)
class RywLedger:
    checks: int = 0
    violations: int = 0
    unjudged: int = 0
    cancel_skipped: int = 0
    """Cancels due while no job submitted in this run was left to cancel."""
    details: list[dict[str, Any]] = field(default_factory=list)
    live: dict[int, int] = field(default_factory=dict)
    """Jobs submitted in this run and not cancelled yet: job id -> client."""

    def submitted(self, client: int, job_id: int) -> None:
        self.live[job_id] = client

    def job_to_cancel(self, client: int) -> tuple[int, int] | None:
        """(job id, owner): the client's own oldest job, else anyone's oldest."""
        for job_id, owner in self.live.items():
            if owner == client:
                del self.live[job_id]
                return job_id, owner
        for job_id, owner in self.live.items():
            del self.live[job_id]
            return job_id, owner
        return None

    def _violation(self, kind: str, job_id: int, client: int, at: float, why: str) -> None:
        self.violations += 1
        if len(self.details) < MAX_DETAILS:
            self.details.append(
                {"kind": kind, "job_id": job_id, "client": client, "t": round(at, 3), "why": why}
            )

    def check_submit(self, client: int, job_id: int, status: int, body: bytes, at: float) -> None:
        if status != 200:
            self.unjudged += 1
            return
        self.checks += 1
        if not slurmapi.lists_job(body, job_id):
            self._violation("submit", job_id, client, at, "new job id missing from /jobs")

    def check_cancel(self, client: int, job_id: int, status: int, body: bytes, at: float) -> None:
        if status != 200:
            # 404 (25.x) or 500 (22.05): the job is gone, which is not stale either.
            self.unjudged += 1
            return
        states = slurmapi.job_states(body)
        if states is None:
            self.unjudged += 1
            return
        self.checks += 1
        if not slurmapi.shows_cancelled(states):
            self._violation("cancel", job_id, client, at, f"job_state {states} after cancel")

    def to_json(self) -> dict[str, Any]:
        return {
            "checks": self.checks,
            "violations": self.violations,
            "unjudged": self.unjudged,
            "cancel_skipped": self.cancel_skipped,
            "examples": self.details,
        }
