"""The ``/slurm/...`` node, partition and reservation operations.

Apart from the job operations because these collections are the same for
every requester who may see them at all: ``PrivateData`` either refuses
the whole read (nodes, partitions) or narrows reservations to those the
user may use, and the rendered lists are cached per version only.
"""

from __future__ import annotations

from typing import Any

from cacheproxy.simulator import jsonfmt, render4x
from cacheproxy.simulator import render38 as r38
from cacheproxy.simulator import view_errors as errors
from cacheproxy.simulator.entities import Node, Partition, Reservation, SimError
from cacheproxy.simulator.envelope import Body, Pre, Response, not_modified
from cacheproxy.simulator.viewctx import (
    Ctx,
    ViewBase,
    as_int,
    json_body_or_empty,
    number,
    unchanged_since,
)


class NodeViews(ViewBase):
    """``/slurm/{v}/node...``, ``partition...`` and ``reservation...`` operations."""

    # ----------------------------------------------------------------- nodes
    def _nodes_member(self, ctx: Ctx) -> tuple[Pre, int]:
        def build() -> tuple[Pre, int]:
            items = [self._node(n, ctx) for n in self.c.nodes.values()]
            return Pre(jsonfmt.member("nodes", items, ctx.legacy)), len(items)

        gens = (self.c.gen["nodes"], self.c.gen["reservations"])
        return self.cache.member(("nodes", ctx.version), gens, build)

    def _node(self, n: Node, ctx: Ctx) -> dict[str, Any]:
        return r38.node(n, self.c) if ctx.legacy else render4x.node(n, self.c, ctx.version)

    def _nodes_hidden(self, ctx: Ctx) -> Body | None:
        """PrivateData=nodes hides nodes; so does =partitions on data_parser
        releases, whose ``_dump_nodes`` (openapi/slurmctld/nodes.c, 23.11 to
        25.11) loads the partitions too and fails the request with that
        call's ``SLURM_ERROR`` when slurmctld refuses it."""
        if self._hidden(ctx, "nodes"):
            return errors.denied(ctx, "nodes", "slurm_load_node")
        if not ctx.legacy and self._hidden(ctx, "partitions"):
            return errors.denied(ctx, "nodes", "_dump_nodes", errno=-1)
        return None

    def nodes(self, ctx: Ctx) -> Body | Response:
        refused = self._nodes_hidden(ctx)
        if refused is not None:
            return refused
        # data_parser releases pass the same update_time to slurm_load_partitions()
        # for the nodes' partition lists, and its "no change" becomes the answer:
        # 304 although nodes changed, when partitions did not (slurmctld/nodes.c).
        if unchanged_since(ctx.query, self.c.changed["nodes"]) or (
            not ctx.legacy and unchanged_since(ctx.query, self.c.changed["partitions"])
        ):
            return not_modified()
        member, n = self._nodes_member(ctx)
        return Body(payload=[("nodes", member), *self._times(ctx, "nodes")], items=n)

    def node(self, ctx: Ctx) -> Body:
        """One node; ``update_time`` is not a parameter here (22.05) or ignored (25.x)."""
        refused = self._nodes_hidden(ctx)
        if refused is not None:
            return refused
        name = ctx.params["node_name"]
        n = self.c.nodes.get(name)
        if n is None:
            return errors.node_not_found(ctx, name)
        return Body(payload=[("nodes", [self._node(n, ctx)]), *self._times(ctx, "nodes")], items=1)

    def node_update(self, ctx: Ctx) -> Body:
        req = json_body_or_empty(ctx)
        state = req.get("state") if isinstance(req, dict) else None
        if isinstance(state, list):
            state = state[0] if state else None
        reason = req.get("reason") if isinstance(req, dict) else None
        try:
            self.c.update_node(
                ctx.params["node_name"],
                ctx.user,
                state if isinstance(state, str) else None,
                reason if isinstance(reason, str) else None,
            )
        except SimError as e:
            return errors.failed(ctx, e, "slurm_update_node()")
        return Body()

    # ------------------------------------------------------------ partitions
    def _partition(self, p: Partition, ctx: Ctx) -> dict[str, Any]:
        return (
            r38.partition(p, self.c) if ctx.legacy else render4x.partition(p, self.c, ctx.version)
        )

    def partitions(self, ctx: Ctx) -> Body | Response:
        if self._hidden(ctx, "partitions"):
            return errors.denied(ctx, "partitions", "slurm_load_partitions")
        if unchanged_since(ctx.query, self.c.changed["partitions"]):
            return not_modified()
        items = [self._partition(p, ctx) for p in self.c.partitions.values()]
        return Body(
            payload=[("partitions", items), *self._times(ctx, "partitions")], items=len(items)
        )

    def partition(self, ctx: Ctx) -> Body | Response:
        if self._hidden(ctx, "partitions"):
            return errors.denied(ctx, "partitions", "slurm_load_partitions")
        if unchanged_since(ctx.query, self.c.changed["partitions"]):
            return not_modified()
        p = self.c.partitions.get(ctx.params["partition_name"])
        if p is None:
            return errors.partition_not_found(ctx, ctx.params["partition_name"])
        return Body(
            payload=[("partitions", [self._partition(p, ctx)]), *self._times(ctx, "partitions")],
            items=1,
        )

    # ---------------------------------------------------------- reservations
    def _reservation(self, r: Reservation, ctx: Ctx) -> dict[str, Any]:
        if ctx.legacy:
            return r38.reservation(r, self.c)
        return render4x.reservation(r, self.c, ctx.version)

    def _usable(self, ctx: Ctx) -> list[Reservation]:
        """PrivateData=reservations: a non-operator sees the reservations they
        may use (``show_resv`` and ``_validate_user_access``,
        src/slurmctld/reservation.c, 22.05.8 to 25.11.0): by account when the
        reservation names accounts (any of the user's associations), else by
        its user list."""
        if not self._hidden(ctx, "reservations"):
            return list(self.c.reservations.values())
        accounts = self.c.user_accounts(ctx.user)
        out = []
        for r in self.c.reservations.values():
            named = [a for a in r.accounts.split(",") if a]
            if named:
                if accounts & set(named):
                    out.append(r)
            elif ctx.user in r.users.split(","):
                out.append(r)
        return out

    def reservations(self, ctx: Ctx) -> Body | Response:
        if unchanged_since(ctx.query, self.c.changed["reservations"]):
            return not_modified()
        items = [self._reservation(r, ctx) for r in self._usable(ctx)]
        return Body(
            payload=[("reservations", items), *self._times(ctx, "reservations")], items=len(items)
        )

    def reservation(self, ctx: Ctx) -> Body | Response:
        if unchanged_since(ctx.query, self.c.changed["reservations"]):
            return not_modified()
        name = ctx.params["reservation_name"]
        r = next((x for x in self._usable(ctx) if x.name == name), None)
        if r is None:
            return errors.reservation_not_found(ctx, name)
        return Body(
            payload=[
                ("reservations", [self._reservation(r, ctx)]),
                *self._times(ctx, "reservations"),
            ],
            items=1,
        )

    def reservation_create(self, ctx: Ctx) -> Body:
        req = json_body_or_empty(ctx)
        items = req.get("reservations") if isinstance(req, dict) else None
        if not isinstance(items, list):
            items = [req]
        created = []
        try:
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    raise SimError(2050, "Requested reservation is invalid")
                nodes = item.get("node_list") or []
                if isinstance(nodes, str):
                    nodes = [n for n in nodes.split(",") if n]
                now = self.c.now()
                res = Reservation(
                    name=item["name"],
                    nodes=[n for n in nodes if n in self.c.nodes],
                    start_time=as_int(number(item.get("start_time")), now),
                    end_time=as_int(number(item.get("end_time")), now + 3600),
                    users=_names(item.get("users")),
                    accounts=_names(item.get("accounts")),
                    flags=[f for f in item.get("flags", []) if isinstance(f, str)],
                    partition=str(item.get("partition") or ""),
                )
                created.append(self.c.create_reservation(ctx.user, res))
        except SimError as e:
            return errors.failed(ctx, e, "slurm_create_reservation()")
        return Body(payload=[("reservations", [self._reservation(r, ctx) for r in created])])

    def reservation_delete(self, ctx: Ctx) -> Body:
        try:
            self.c.delete_reservation(ctx.user, ctx.params["reservation_name"])
        except SimError as e:
            return errors.failed(
                ctx, e, "slurm_delete_reservation()", 404 if e.errno == 2050 else 500
            )
        return Body()


def _names(v: Any) -> str:
    """A reservation's ``users``/``accounts``: a list or a comma-separated string."""
    return ",".join(v) if isinstance(v, list) else str(v or "")
