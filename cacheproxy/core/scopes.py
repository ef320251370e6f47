"""Route scopes: which cached routes slurmrestd answers identically to every
user it accepts (``shared``: one entry for all), and which it answers per user
(``user``: one entry per credential, the proxy's only behaviour until the site
says what its ``PrivateData`` is).

The table below says which ``PrivateData`` word makes each route's answer
depend on who asks, read in SchedMD's source (22.05.8 to 25.11: the checks are
in the controller and in slurmdbd, not in slurmrestd's handlers, so they hold
for every API version, v0.0.38 to v0.0.44, of the same route):

* slurmctld lists with ``SHOW_ALL`` (slurmrestd's openapi/slurmctld plugins
  pass it for jobs, nodes and partitions), so no partition visibility or
  hidden-partition filtering depends on the user; only ``PrivateData`` does
  (``_hide_job_user_rec`` in job_mgr.c, ``_node_is_hidden`` in node_mgr.c and
  ``_slurm_rpc_dump_nodes``/``_slurm_rpc_dump_partitions`` in proc_req.c,
  ``show_resv`` in reservation.c, ``assoc_mgr_get_shares``
  in assoc_mgr.c).  ``pack_job`` takes the caller's uid but does not use it.
* slurmdbd: as_mysql_acct.c (accounts), as_mysql_assoc.c and as_mysql_user.c
  (users, and usage when asked with usage), as_mysql_cluster.c
  (``as_mysql_get_instances``: events).  Some answers depend on the user
  whatever ``PrivateData`` says (:data:`ALWAYS_USER`): wckeys (operators
  only, proc_req.c ``_get_wckeys``), the config dump that holds them, and the
  accounting jobs (``_get_jobs_cond`` refuses wide or runaway queries to
  non-operators only; the script and environment are per user).
* ``cloud`` shows powered-down cloud nodes to everyone alike (22.05; gone in
  later releases): it governs no per-user difference.
* A route not in the table (or one an audit demoted) stays per user: sharing
  is only ever granted by this table, never assumed.

Pure: no I/O; :mod:`cacheproxy.http.sitescope` reads the setting and slurm.conf.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

USER = "user"
SHARED = "shared"


@dataclass(frozen=True, slots=True)
class Governed:
    """What makes a route's answer depend on the user."""

    words: frozenset[str]
    """The ``PrivateData`` words that do (empty: none; shared whenever known)."""
    where: str
    """Where Slurm applies them."""


def _g(words: str, where: str) -> Governed:
    return Governed(frozenset(w for w in words.split(",") if w), where)


_JOBS = _g("jobs", "slurmctld job_mgr.c _hide_job_user_rec")
_NODES = _g(
    "nodes,partitions",
    "slurmctld proc_req.c _slurm_rpc_dump_nodes, node_mgr.c _node_is_hidden; "
    "slurmrestd 23.11+ _dump_nodes loads the partitions too",
)
_PARTS = _g("partitions", "slurmctld proc_req.c _slurm_rpc_dump_partitions")
_RESV = _g("reservations", "slurmctld reservation.c show_resv")
_DB_USERS = _g("users,usage", "slurmdbd as_mysql_user.c as_mysql_get_users")
_DB_ACCTS = _g("accounts,users,usage", "slurmdbd as_mysql_acct.c (with associations: users)")
_DB_ASSOCS = _g("users,usage", "slurmdbd as_mysql_assoc.c as_mysql_get_assocs")
_DB_INSTANCES = _g("events", "slurmdbd as_mysql_cluster.c as_mysql_get_instances")
_NONE_CTLD = _g("", "slurmctld: no PrivateData check")
_NONE_DBD = _g("", "slurmdbd: no PrivateData check")

GOVERNED_BY: dict[str, Governed] = {
    "jobs": _JOBS,
    "jobs-state": _JOBS,
    "job": _JOBS,
    "resources": _JOBS,
    "nodes": _NODES,
    "node": _NODES,
    "partitions": _PARTS,
    "partition": _PARTS,
    "reservations": _RESV,
    "reservation": _RESV,
    "licenses": _NONE_CTLD,
    "shares": _g("usage,users", "slurmctld assoc_mgr.c assoc_mgr_get_shares"),
    "db-users": _DB_USERS,
    "db-user": _DB_USERS,
    "db-accounts": _DB_ACCTS,
    "db-account": _DB_ACCTS,
    "db-associations": _DB_ASSOCS,
    "db-association": _DB_ASSOCS,
    "db-instances": _DB_INSTANCES,
    "db-instance": _DB_INSTANCES,
    "db-qos": _NONE_DBD,
    "db-qos-one": _NONE_DBD,
    "db-tres": _NONE_DBD,
    "db-clusters": _NONE_DBD,
    "db-cluster": _NONE_DBD,
}
"""Rule name -> what makes its answer per user.  Rules not named here stay
per user (``conf``, ``db-conf``, the OpenAPI documents, a site's own rules,
and :data:`ALWAYS_USER`)."""

ALWAYS_USER: dict[str, str] = {
    "db-wckeys": "slurmdbd proc_req.c _get_wckeys: operators only",
    "db-wckey": "slurmdbd proc_req.c _get_wckeys: operators only",
    "db-config": "the dump holds the wckeys (operators only)",
    "db-jobs": "slurmdbd proc_req.c _get_jobs_cond: MaxQueryTimeRange and runaway "
    "queries refused to non-operators only; PrivateData=jobs, script, environment",
    "db-job": "slurmdbd proc_req.c _get_jobs_cond (as db-jobs)",
}
"""Rules whose answer depends on who asks whatever ``PrivateData`` says."""


def scope_of(
    rule: str, private: frozenset[str] | None, demoted: Iterable[str] = ()
) -> tuple[str, str]:
    """``(scope, why)`` of the rule named ``rule`` under the site's
    ``PrivateData`` words (None: not configured)."""
    if private is None:
        return USER, "PrivateData not configured (--private-data, --slurm-conf): per user"
    if rule in demoted:
        return USER, "demoted at run time: answers were seen to differ by user"
    if rule in ALWAYS_USER:
        return USER, f"per user whatever PrivateData says: {ALWAYS_USER[rule]}"
    governed = GOVERNED_BY.get(rule)
    if governed is None:
        return USER, "not in the PrivateData table: per user"
    hiding = governed.words & private
    if hiding:
        return USER, f"PrivateData={','.join(sorted(hiding))} ({governed.where})"
    if governed.words:
        why = f"shared unless PrivateData has {' or '.join(sorted(governed.words))}"
    else:
        why = "shared: no PrivateData word governs it"
    return SHARED, f"{why} ({governed.where})"


def shared_rules(
    rules: Iterable[str], private: frozenset[str] | None, demoted: Iterable[str] = ()
) -> frozenset[str]:
    """The names among ``rules`` whose scope is shared."""
    demoted = frozenset(demoted)
    return frozenset(r for r in rules if scope_of(r, private, demoted)[0] == SHARED)
