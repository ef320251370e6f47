"""The operations of ``/slurmdb/...`` (slurmdbd): accounting reads and writes.

They never take the controller lock: slurmdbd is its own daemon with its own
(much slower) service time, applied by the app through ``CostModel.dbd``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from cacheproxy.simulator import render4x
from cacheproxy.simulator import render38 as r38
from cacheproxy.simulator import view_errors as errors
from cacheproxy.simulator.entities import (
    ACCESS_DENIED,
    Account,
    Association,
    Job,
    Qos,
    SimError,
    User,
)
from cacheproxy.simulator.envelope import Body, error_entry
from cacheproxy.simulator.viewctx import (
    Ctx,
    ViewBase,
    json_body,
    list_member,
    parse_job_id,
)

#: Operations a non-administrator may not call (22.05: 500, Access/permission denied).
ADMIN_ONLY = frozenset({"db_config", "db_diag", "db_wckeys"})


class DbViews(ViewBase):
    """``/slurmdb/{v}/...`` operations."""

    def denied(self, ctx: Ctx, source: str) -> Body:
        return Body(
            errors=[error_entry(ctx.version, *ACCESS_DENIED, source, "Access/permission denied")],
            status=500,
        )

    def _r(
        self, ctx: Ctx, legacy: Callable[..., Any], modern: Callable[..., Any], *args: Any
    ) -> Any:
        if ctx.legacy:
            return legacy(*args, self.c)
        return modern(*args, self.c, ctx.version)

    # ------------------------------------------------------------------ jobs
    def _select_jobs(self, ctx: Ctx) -> list[Job]:
        jobs = [j for j in self.c.history.values() if self.c.job_visible(ctx.viewer, j)]
        q = ctx.query
        if q.get("users"):
            names = set(q["users"].split(","))
            jobs = [j for j in jobs if j.user in names]
        if q.get("account"):
            accts = set(q["account"].split(","))
            jobs = [j for j in jobs if j.account in accts]
        if q.get("partition"):
            parts = set(q["partition"].split(","))
            jobs = [j for j in jobs if j.partition in parts]
        if q.get("state"):
            states = {s.upper() for s in q["state"].split(",")}
            jobs = [j for j in jobs if j.state in states]
        if q.get("job_name"):
            names = set(q["job_name"].split(","))
            jobs = [j for j in jobs if j.name in names]
        return jobs

    def _db_fragments(self, jobs: list[Job], ctx: Ctx) -> list[bytes]:
        def build(j: Job) -> dict[str, Any]:
            return r38.db_job(j, self.c) if ctx.legacy else render4x.db_job(j, self.c, ctx.version)

        return [self.cache.job_fragment(j, ctx.version, "db", build) for j in jobs]

    def db_jobs(self, ctx: Ctx) -> Body:
        filtered = any(
            ctx.query.get(k) for k in ("users", "account", "partition", "state", "job_name")
        )
        if filtered:
            jobs = self._select_jobs(ctx)
            member = list_member("jobs", self._db_fragments(jobs, ctx), ctx.legacy)
            n = len(jobs)
        else:

            def build() -> tuple[Any, int]:
                jobs = self._select_jobs(ctx)
                return list_member("jobs", self._db_fragments(jobs, ctx), ctx.legacy), len(jobs)

            member, n = self.cache.member(
                ("dbjobs", ctx.version, ctx.viewer), (self.c.gen["db"],), build
            )
        return Body(payload=[("jobs", member)], items=n)

    def db_job(self, ctx: Ctx) -> Body:
        parsed = parse_job_id(ctx.params["job_id"])
        jobs: list[Job] = []
        if parsed is not None:
            jobs = [
                j
                for j in self.c.history.values()
                if j.job_id == parsed[0]
                or (
                    j.array_job_id == parsed[0]
                    and (parsed[1] is None or j.array_task_id == parsed[1])
                )
            ]
        jobs = [j for j in jobs if self.c.job_visible(ctx.viewer, j)]
        warnings = []
        if not jobs and not ctx.legacy:
            warnings.append(
                {"description": "slurmdb_jobs_get() found nothing", "source": "_dump_jobs"}
            )
        return Body(
            payload=[("jobs", list_member("jobs", self._db_fragments(jobs, ctx), ctx.legacy))],
            warnings=warnings,
            items=len(jobs),
        )

    # ------------------------------------------------------------- entities
    def _visible_users(self, ctx: Ctx) -> list[User]:
        """PrivateData=users: a non-operator lists only themselves, coordinator
        or not (``as_mysql_get_users``, as_mysql_user.c, 22.05.8 to 25.11.0)."""
        users = list(self.c.users.values())
        if self._hidden(ctx, "users"):
            users = [u for u in users if u.name == ctx.user]
        return users

    def _visible_accounts(self, ctx: Ctx) -> list[Account] | None:
        """PrivateData=accounts: only the accounts a non-operator coordinates;
        ``None`` (ESLURM_ACCESS_DENIED) when they coordinate none
        (``as_mysql_get_accts``, as_mysql_acct.c, 22.05.8 to 25.11.0)."""
        accounts = list(self.c.accounts.values())
        if not self._hidden(ctx, "accounts"):
            return accounts
        coord = self.c.coordinated(ctx.user)
        if not coord:
            return None
        return [a for a in accounts if a.name in coord]

    def _assoc_visible(self, ctx: Ctx) -> Callable[[Association], bool]:
        """PrivateData=users: a non-operator sees the associations under their
        own (lineage prefix: their user associations) and every association of
        the accounts they coordinate (``_cluster_get_assocs``, as_mysql_assoc.c,
        22.05.8 to 25.11.0)."""
        if not self._hidden(ctx, "users"):
            return lambda a: True
        coord = self.c.coordinated(ctx.user)
        return lambda a: a.user == ctx.user or a.account in coord

    def _users(self, ctx: Ctx) -> list[dict[str, Any]]:
        return [self._r(ctx, r38.db_user, render4x.db_user, u) for u in self._visible_users(ctx)]

    def _accounts(self, ctx: Ctx) -> list[dict[str, Any]]:
        return [
            self._r(ctx, r38.db_account, render4x.db_account, a)
            for a in self._visible_accounts(ctx) or []
        ]

    def _assocs(
        self, ctx: Ctx, only: Callable[[Association], bool] | None = None
    ) -> list[dict[str, Any]]:
        seen = self._assoc_visible(ctx)
        return [
            self._r(ctx, r38.db_association, render4x.db_association, a)
            for a in self.c.associations
            if seen(a) and (only is None or only(a))
        ]

    def _qos(self, ctx: Ctx) -> list[dict[str, Any]]:
        return [self._r(ctx, r38.db_qos, render4x.db_qos, q) for q in self.c.qos.values()]

    def _tres(self, ctx: Ctx) -> list[dict[str, Any]]:
        return r38.db_tres(self.c) if ctx.legacy else render4x.db_tres(self.c, ctx.version)

    def _clusters(self, ctx: Ctx) -> list[dict[str, Any]]:
        return [r38.db_cluster(self.c) if ctx.legacy else render4x.db_cluster(self.c, ctx.version)]

    def db_users(self, ctx: Ctx) -> Body:
        items = self._users(ctx)
        return Body(payload=[("users", items)], items=len(items))

    def db_user(self, ctx: Ctx) -> Body:
        u = next((x for x in self._visible_users(ctx) if x.name == ctx.params["name"]), None)
        items = [self._r(ctx, r38.db_user, render4x.db_user, u)] if u else []
        return Body(payload=[("users", items)], items=len(items))

    def db_accounts(self, ctx: Ctx) -> Body:
        if self._visible_accounts(ctx) is None:
            return self.denied(ctx, "accounts")
        items = self._accounts(ctx)
        return Body(payload=[("accounts", items)], items=len(items))

    def db_account(self, ctx: Ctx) -> Body:
        visible = self._visible_accounts(ctx)
        if visible is None:
            return self.denied(ctx, "accounts")
        a = next((x for x in visible if x.name == ctx.params["account_name"]), None)
        items = [self._r(ctx, r38.db_account, render4x.db_account, a)] if a else []
        return Body(payload=[("accounts", items)], items=len(items))

    def db_associations(self, ctx: Ctx) -> Body:
        q = ctx.query

        def only(a: Association) -> bool:
            if q.get("user") and a.user not in q["user"].split(","):
                return False
            return not (q.get("account") and a.account not in q["account"].split(","))

        items = self._assocs(ctx, only)
        return Body(payload=[("associations", items)], items=len(items))

    def db_qos(self, ctx: Ctx) -> Body:
        items = self._qos(ctx)
        return Body(payload=[("qos", items)], items=len(items))

    def db_qos_one(self, ctx: Ctx) -> Body:
        q = self.c.qos.get(ctx.params["qos"])
        items = [self._r(ctx, r38.db_qos, render4x.db_qos, q)] if q else []
        return Body(payload=[("qos", items)], items=len(items))

    def db_tres(self, ctx: Ctx) -> Body:
        items = self._tres(ctx)
        # Every version dumps under "TRES" (22.05's dbv0.0.38 tres.c included;
        # its spec's "tres" is wrong).
        return Body(payload=[("TRES", items)], items=len(items))

    def db_clusters(self, ctx: Ctx) -> Body:
        return Body(payload=[("clusters", self._clusters(ctx))], items=1)

    def db_cluster(self, ctx: Ctx) -> Body:
        items = (
            self._clusters(ctx) if ctx.params["cluster_name"] == self.c.config.cluster_name else []
        )
        return Body(payload=[("clusters", items)], items=len(items))

    def db_wckeys(self, ctx: Ctx) -> Body:
        return Body(payload=[("wckeys", [])])

    def db_config(self, ctx: Ctx) -> Body:
        if ctx.legacy:
            # 22.05's config.c runs the other handlers in this order on one body.
            payload: list[tuple[str, Any]] = [
                ("clusters", self._clusters(ctx)),
                ("TRES", self._tres(ctx)),
                ("accounts", self._accounts(ctx)),
                ("users", self._users(ctx)),
                ("qos", self._qos(ctx)),
                ("wckeys", []),
                ("associations", self._assocs(ctx)),
            ]
        else:
            payload = [
                ("clusters", self._clusters(ctx)),
                ("tres", self._tres(ctx)),
                ("accounts", self._accounts(ctx)),
                ("users", self._users(ctx)),
                ("qos", self._qos(ctx)),
                ("wckeys", []),
                ("associations", self._assocs(ctx)),
                ("instances", []),
            ]
        return Body(payload=payload, items=sum(len(v) for _, v in payload))

    def db_diag(self, ctx: Ctx) -> Body:
        stats = r38.db_diag(self.c) if ctx.legacy else render4x.db_diag(self.c, ctx.version)
        return Body(payload=[("statistics", stats)], items=1)

    def db_ping(self, ctx: Ctx) -> Body:
        return Body(
            payload=[
                (
                    "pings",
                    [
                        {
                            "hostname": "slurmdbd",
                            "responding": True,
                            "latency": 1200,
                            "primary": True,
                        }
                    ],
                )
            ],
            items=1,
        )

    # ---------------------------------------------------------------- writes
    def _list_body(self, ctx: Ctx, key: str) -> list[dict[str, Any]] | Body:
        try:
            req = json_body(ctx)
        except orjson.JSONDecodeError:
            return errors.unparsable(ctx)
        items = req.get(key) if isinstance(req, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return errors.malformed(ctx, 9001, f"Expected a list of {key}", "_parse")
        return items

    def _apply(self, ctx: Ctx, source: str, fn: Callable[[], object]) -> Body:
        try:
            fn()
        except SimError as e:
            return errors.failed(ctx, e, source)
        return Body()

    def db_accounts_add(self, ctx: Ctx) -> Body:
        items = self._list_body(ctx, "accounts")
        if isinstance(items, Body):
            return items
        accounts = [
            Account(
                str(i.get("name", "")),
                str(i.get("description", "")),
                str(i.get("organization", "")),
                parent=str(i.get("parent_account") or "root"),
            )
            for i in items
            if i.get("name")
        ]
        return self._apply(
            ctx, "slurmdb_accounts_add", lambda: self.c.add_accounts(ctx.user, accounts)
        )

    def db_users_add(self, ctx: Ctx) -> Body:
        items = self._list_body(ctx, "users")
        if isinstance(items, Body):
            return items
        users = []
        for i in items:
            name = str(i.get("name", ""))
            if not name:
                continue
            default = i.get("default")
            if not isinstance(default, dict):
                default = {}
            level = i.get("administrator_level", "None")
            if isinstance(level, list):
                level = level[0] if level else "None"
            users.append(
                User(
                    name,
                    self.c.uid_of(name) if name in self.c.users else 5000 + len(self.c.users),
                    str(default.get("account") or "root"),
                    admin_level=str(level),
                )
            )
        return self._apply(ctx, "slurmdb_users_add", lambda: self.c.add_users(ctx.user, users))

    def db_associations_add(self, ctx: Ctx) -> Body:
        items = self._list_body(ctx, "associations")
        if isinstance(items, Body):
            return items
        pairs = [
            (str(i.get("account", "")), str(i.get("user", "")), str(i.get("partition", "")))
            for i in items
        ]
        return self._apply(
            ctx, "slurmdb_associations_add", lambda: self.c.add_associations(ctx.user, pairs)
        )

    def db_qos_add(self, ctx: Ctx) -> Body:
        items = self._list_body(ctx, "qos")
        if isinstance(items, Body):
            return items
        qos = [
            Qos(0, str(i["name"]), str(i.get("description", ""))) for i in items if i.get("name")
        ]
        return self._apply(ctx, "slurmdb_qos_add", lambda: self.c.add_qos(ctx.user, qos))

    def db_account_delete(self, ctx: Ctx) -> Body:
        removed: list[str] = []

        def run() -> None:
            removed.extend(self.c.delete_account(ctx.user, ctx.params["account_name"]))

        body = self._apply(ctx, "slurmdb_accounts_remove", run)
        if not ctx.legacy and body.status == 200:
            body.payload = [("removed_accounts", removed)]
        return body

    def db_user_delete(self, ctx: Ctx) -> Body:
        return self._apply(
            ctx, "slurmdb_users_remove", lambda: self.c.delete_user(ctx.user, ctx.params["name"])
        )
