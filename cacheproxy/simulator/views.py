"""The operations of ``/slurm/...``: read the cluster, apply writes, shape bodies.

Every operation is synchronous and runs while the simulated controller lock
is held (see ``cost.py``), so what it reads is one consistent snapshot.
Rendering is the expensive part in Python, so lists are rendered once per
(version, viewer) and per generation of the data, and reused until a change.

The job operations are in ``views_jobs.py``, the node, partition and
reservation ones in ``views_nodes.py``, the failed answers per release in
``view_errors.py``; this module holds the controller-wide ones (ping, diag,
licenses, shares, reconfigure) and joins them all into :class:`SlurmViews`,
whose method names are the operations of ``routes.py``.
"""

from __future__ import annotations

from cacheproxy.simulator import render4x
from cacheproxy.simulator import render38 as r38
from cacheproxy.simulator import view_errors as errors
from cacheproxy.simulator.entities import LICENSES, SimError
from cacheproxy.simulator.envelope import Body
from cacheproxy.simulator.viewctx import Ctx
from cacheproxy.simulator.views_jobs import JobViews
from cacheproxy.simulator.views_nodes import NodeViews


class SlurmViews(JobViews, NodeViews):
    """``/slurm/{v}/...`` operations."""

    def ping(self, ctx: Ctx) -> Body:
        p = r38.ping(self.c) if ctx.legacy else render4x.ping(self.c, ctx.version)
        return Body(payload=[("pings", [p])], items=1)

    def diag(self, ctx: Ctx) -> Body:
        if ctx.legacy:
            stats = r38.diag(self.c, ctx.client_requests)
        else:
            stats = render4x.diag(self.c, ctx.version, ctx.client_requests)
        return Body(payload=[("statistics", stats)], items=1)

    def licenses(self, ctx: Ctx) -> Body:
        used = self.c.licenses_in_use()
        if ctx.legacy:
            items = [r38.license_(n, t, used[n]) for n, t in LICENSES.items()]
        else:
            items = [render4x.license_(n, t, used[n], ctx.version) for n, t in LICENSES.items()]
        return Body(payload=[("licenses", items), *self._times(ctx, "licenses")], items=len(items))

    def shares(self, ctx: Ctx) -> Body:
        users = set(ctx.query["users"].split(",")) if ctx.query.get("users") else None
        accounts = set(ctx.query["accounts"].split(",")) if ctx.query.get("accounts") else None
        visible = None
        if self._hidden(ctx, "usage"):
            # assoc_mgr_get_shares (src/common/assoc_mgr.c, 22.05.8 to 25.11.0):
            # own user associations and every association of a coordinated account.
            coord = self.c.coordinated(ctx.user)
            visible = {
                a.id for a in self.c.associations if a.user == ctx.user or a.account in coord
            }
        s = render4x.shares(self.c, ctx.version, users, accounts, visible)
        return Body(payload=[("shares", s)], items=len(s["shares"]))

    def reconfigure(self, ctx: Ctx) -> Body:
        try:
            self.c.reconfigure(ctx.user)
        except SimError as e:
            return errors.failed(ctx, e, "slurm_reconfigure()")
        return Body()
