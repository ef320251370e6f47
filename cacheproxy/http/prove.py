"""A credential's proof: the cheapest question slurmctld authenticates.

A credential slurmrestd has not accepted yet may not read a shared entry.
When its request finds a fresh shared entry (a hit once accepted), fetching
the whole list as that user only to prove the credential makes every other
request of its first burst wait for the slowest answer (a dashboard asks
``/jobs`` first).  Instead the proxy asks, as that user,
``/slurm/{v}/jobs?update_time=<a day ahead>``: slurmctld authenticates the
RPC, then answers "no change" without building any list (a brief read lock),
whatever ``PrivateData`` says.  A 2xx with no error accepts the credential,
recorded as any acceptance (:mod:`cacheproxy.http.credentials`); a refusal
revokes it; anything else gives no verdict, and the request then goes
upstream as its own proof, as before.  The waiting requests are then decided
again: shared hits (sampled by the audit like any hit) once accepted.

22.05's paths answer "no change" with a bare 304, which is not taken as an
acceptance (:func:`cacheproxy.core.policy.credential_accepted`): they keep
the first miss as the proof.
"""

from __future__ import annotations

from collections.abc import Callable

from cacheproxy.core import policy
from cacheproxy.core.plan import GetPlan
from cacheproxy.core.request import LEGACY_VERSIONS, from_scope
from cacheproxy.core.rules import COST_CLASSES
from cacheproxy.http.credentials import Credentials
from cacheproxy.http.forward import upstream_headers
from cacheproxy.http.respond import Scope
from cacheproxy.stats import Stats
from cacheproxy.upstream.base import Transport, UpstreamError, UpstreamRequest

PROOF_AHEAD = 86400
"""Seconds ahead of now the proof's ``update_time`` lies: later than any job
change, whatever the skew between the proxy's clock and slurmctld's."""
PROOF_MAX_BYTES = 64 * 1024
"""A "no change" answer is a few hundred bytes; a longer one is not read."""
PROOF_RULE = "proof"
"""The name the proof's upstream requests are counted under."""


class Prover:
    """Asks slurmrestd to judge a credential at the least cost to slurmctld."""

    def __init__(
        self,
        *,
        transport: Transport,
        credentials: Credentials,
        stats: Stats,
        clock: Callable[[], float],
        upstream_host: bytes,
    ) -> None:
        self.transport = transport
        self.credentials = credentials
        self.stats = stats
        self.clock = clock
        self.upstream_host = upstream_host

    def applies(self, plan: GetPlan) -> bool:
        """Whether the cheap question can prove this request's credential: a
        data_parser release's path, and a credential an answer could still
        accept (not past its JWT's ``exp``)."""
        segments = plan.route.segments
        if (
            len(segments) < 2
            or not segments[1].startswith("v0.0.")
            or (segments[1] in LEGACY_VERSIONS)
        ):
            return False
        now = self.clock()
        return policy.accepted_until(plan.identity, now, self.credentials.auth_ttl) > now

    async def prove(self, scope: Scope, plan: GetPlan) -> None:
        """Ask, and record slurmrestd's verdict (none on any failure)."""
        version = plan.route.segments[1]
        req = from_scope(scope, (plan.route.segments, plan.route.query), plan.view)
        up = UpstreamRequest(
            method="GET",
            target=f"/slurm/{version}/jobs?update_time={int(self.clock()) + PROOF_AHEAD}",
            headers=upstream_headers(req, self.upstream_host, None),
            retry_on_stale_connection=True,
            user=plan.identity.user,
            cost=COST_CLASSES["cheap"],
        )
        self.stats.upstream_requests[PROOF_RULE] += 1
        try:
            resp = await self.transport.send(up)
        except UpstreamError:
            return
        try:
            status = resp.status
            length = policy.content_length(resp.headers)
            if length is None or length > PROOF_MAX_BYTES:
                return
            body = resp.body_if_complete()
            if body is None:
                body = b"".join([c async for c in resp.aiter_body()])
            await self.credentials.judge(
                plan.identity, plan.match, status, body, body[:4096], resp.headers
            )
        except UpstreamError:
            return
        finally:
            await resp.aclose()
