"""Item shapes of slurmrestd 25.05 / 25.11 (data_parser v0.0.43 / v0.0.44).

Numbers are ``{"set", "infinite", "number"}`` objects, states are arrays of
flags.  The two versions differ little for the simulated items (v0.0.44 jobs
add ``step_id`` and ``submit_line``): the templates carry that difference.
"""

from __future__ import annotations

from typing import Any

from cacheproxy.simulator import model as m
from cacheproxy.simulator.entities import (
    CORES_PER_SOCKET,
    NODE_CPUS,
    NODE_MEMORY_MB,
    SOCKETS,
    Account,
    Association,
    Job,
    Node,
    Partition,
    Qos,
    Reservation,
    User,
    hostlist,
)
from cacheproxy.simulator.releases import Release
from cacheproxy.simulator.templates import fresh

RELEASES = {
    "v0.0.43": {"major": "25", "micro": "4", "minor": "05", "release": "25.05.4"},
    "v0.0.44": {"major": "25", "micro": "0", "minor": "11", "release": "25.11.0"},
}


def num(n: int | float, *, is_set: bool = True, infinite: bool = False) -> dict[str, Any]:
    return {"set": is_set, "infinite": infinite, "number": n}


UNSET = {"set": False, "infinite": False, "number": 0}


def meta(
    version: str, plugin: str, cluster: str, source: str, release: Release | None = None
) -> dict[str, Any]:
    """``meta`` of a data_parser body; ``client.source`` names the requester's connection.

    ``release`` is the daemon serving the request (default: the one of the
    version's templates).  slurmrestd fills only ``client.source`` per request
    (``query_meta.client.source = context_id``, src/slurmrestd/openapi.c,
    23.11.0 to master); ``client.user``/``group`` are the plugin's constants:
    uid/gid 0 ("root") for slurmctld (openapi/slurmctld/api.c leaves them
    unset) and ``SLURM_AUTH_NOBODY`` (99) for slurmdbd (openapi/slurmdbd/api.c),
    which dumps as "" until 25.11 names it "nobody" (src/common/uid.c).
    """
    if release is None:
        r = RELEASES[version]
    else:
        major, minor, micro = release.full.split(".")
        r = {"major": major, "minor": minor, "micro": micro, "release": release.full}
    if plugin == "slurm":
        user, group = "root", "root"
    else:
        named = (int(r["major"]), int(r["minor"])) >= (25, 11)
        user, group = ("nobody" if named else ""), ""
    kind = "slurmctld" if plugin == "slurm" else "slurmdbd"
    return {
        "plugin": {
            "type": f"openapi/{kind}",
            "name": f"Slurm OpenAPI {kind}",
            "data_parser": f"data_parser/{version}",
            "accounting_storage": "accounting_storage/slurmdbd",
        },
        "client": {"source": source, "user": user, "group": group},
        "command": [],
        "slurm": {
            "version": {"major": r["major"], "micro": r["micro"], "minor": r["minor"]},
            "release": r["release"],
            "cluster": cluster,
        },
    }


def _t(version: str, name: str) -> dict[str, Any]:
    return fresh(f"v{version[-2:]}_{name}")


def _tres(job: Job) -> str:
    mem = job.cpus * 512
    mem_s = f"{mem // 1024}G" if mem % 1024 == 0 else f"{mem}M"
    return f"cpu={job.cpus},mem={mem_s},node={job.node_count},billing={job.cpus}"


def _exit(code: int, state: str) -> dict[str, Any]:
    if state == "CANCELLED":
        return {
            "status": ["SIGNALED"],
            "return_code": UNSET,
            "signal": {"id": num(15), "name": "TERM"},
        }
    return {
        "status": ["SUCCESS"] if code == 0 else ["ERROR"],
        "return_code": num(code),
        "signal": {"id": UNSET, "name": ""},
    }


def _resources(j: Job) -> dict[str, Any]:
    per_node = max(1, j.cpus // max(1, j.node_count))
    allocation = []
    for idx, name in enumerate(j.nodes):
        sockets = []
        left = per_node
        for s in range(SOCKETS):
            take = min(left, CORES_PER_SOCKET)
            left -= take
            sockets.append(
                {
                    "index": s,
                    "cores": [
                        {"index": c, "status": ["ALLOCATED" if c < take else "UNALLOCATED"]}
                        for c in range(CORES_PER_SOCKET)
                    ],
                }
            )
        allocation.append(
            {
                "index": idx,
                "name": name,
                "cpus": {"count": per_node, "used": 0},
                "memory": {"used": 0, "allocated": per_node * 512},
                "sockets": sockets,
            }
        )
    return {
        "select_type": ["CORE"],
        "nodes": {
            "count": len(j.nodes),
            "select_type": ["ONE_ROW"],
            "list": hostlist(j.nodes),
            "whole": per_node >= NODE_CPUS,
            "allocation": allocation,
        },
        "cpus": j.cpus,
        "threads_per_core": UNSET,
    }


def job(j: Job, c: m.Cluster, version: str) -> dict[str, Any]:
    started = j.start_time > 0 and bool(j.nodes)
    d = _t(version, "job_running" if started else "job_pending")
    d["account"] = j.account
    d["accrue_time"] = num(j.submit_time if started else 0)
    d["allocating_node"] = "login1"
    d["array_job_id"] = num(j.array_job_id)
    d["array_task_id"] = num(j.array_task_id) if j.array_task_id is not None else UNSET
    d["association_id"] = 0
    d["batch_host"] = j.nodes[0] if started else ""
    d["cluster"] = c.config.cluster_name
    d["comment"] = j.comment
    d["eligible_time"] = num(j.submit_time)
    d["end_time"] = num(j.end_time)
    d["exit_code"] = _exit(j.exit_code, j.state)
    d["group_id"] = j.uid
    d["group_name"] = j.user
    d["job_id"] = j.job_id
    d["job_resources"] = _resources(j) if started else None
    d["job_state"] = [j.state]
    d["last_sched_evaluation"] = num(j.start_time or j.submit_time)
    d["licenses"] = j.licenses
    d["mail_user"] = j.user
    d["name"] = j.name
    d["nodes"] = hostlist(j.nodes)
    d["cpus"] = num(j.cpus)
    d["node_count"] = num(j.node_count)
    d["tasks"] = num(j.cpus)
    d["partition"] = j.partition
    d["priority"] = num(j.priority)
    d["qos"] = j.qos
    d["start_time"] = num(j.start_time)
    d["state_reason"] = j.reason
    d["standard_output"] = j.std_out
    d["stdout_expanded"] = j.std_out.replace("%j", str(j.job_id))
    d["submit_time"] = num(j.submit_time)
    d["time_limit"] = num(j.time_limit)
    d["tres_req_str"] = _tres(j)
    d["tres_alloc_str"] = _tres(j) if started else ""
    d["user_id"] = j.uid
    d["user_name"] = j.user
    d["current_working_directory"] = j.cwd
    if "step_id" in d:
        d["step_id"]["job_id"] = num(j.job_id)
    if "submit_line" in d:
        d["submit_line"] = f"sbatch --ntasks {j.cpus} --time {j.time_limit} {j.name}.sh"
    return d


def job_state(j: Job) -> dict[str, Any]:
    """An item of ``/jobs/state`` (the real OPENAPI_JOB_STATE_RESP shape)."""
    jid = f"{j.array_job_id}_{j.array_task_id}" if j.array_task_id is not None else str(j.job_id)
    return {"job_id": jid, "state": [j.state]}


def node(n: Node, c: m.Cluster, version: str) -> dict[str, Any]:
    d = _t(version, "node")
    d["boot_time"] = num(n.boot_time)
    d["cores"] = CORES_PER_SOCKET
    d["sockets"] = SOCKETS
    d["cpus"] = d["effective_cpus"] = NODE_CPUS
    d["cpu_load"] = n.cpu_load
    d["free_mem"] = num(NODE_MEMORY_MB - n.alloc_memory)
    d["last_busy"] = num(c.start_time)
    d["name"] = d["hostname"] = d["address"] = n.name
    state = [n.base_state]
    if n.admin_state == "DRAIN":
        state.append("DRAIN")
    d["state"] = state
    d["partitions"] = list(n.partitions)
    d["real_memory"] = NODE_MEMORY_MB
    d["reason"] = n.reason
    d["reason_changed_at"] = num(n.reason_time)
    d["reason_set_by_user"] = n.reason_user
    d["reservation"] = next(
        (r.name for r in c.reservations.values() if n.name in r.nodes and r.start_time <= c.now()),
        "",
    )
    d["alloc_memory"] = n.alloc_memory
    d["alloc_cpus"] = n.alloc_cpus
    d["alloc_idle_cpus"] = NODE_CPUS - n.alloc_cpus
    d["tres_used"] = f"cpu={n.alloc_cpus}" if n.alloc_cpus else ""
    d["slurmd_start_time"] = num(n.boot_time + 60)
    d["tres"] = f"cpu={NODE_CPUS},mem={NODE_MEMORY_MB // 1024}G,billing={NODE_CPUS}"
    d["version"] = RELEASES[version]["release"]
    return d


def partition(p: Partition, c: m.Cluster, version: str) -> dict[str, Any]:
    d = _t(version, "partition")
    d["nodes"] = {
        "allowed_allocation": "",
        "configured": hostlist(p.nodes),
        "total": len(p.nodes),
    }
    cpus = NODE_CPUS * len(p.nodes)
    mem_g = NODE_MEMORY_MB // 1024 * len(p.nodes)
    d["tres"] = {
        "billing_weights": "",
        "configured": f"cpu={cpus},mem={mem_g}G,node={len(p.nodes)},billing={cpus}",
    }
    d["cpus"] = {"task_binding": 0, "total": cpus}
    d["maximums"]["time"] = num(p.max_time)
    d["name"] = p.name
    d["partition"] = {"state": [p.state]}
    return d


def reservation(r: Reservation, c: m.Cluster, version: str) -> dict[str, Any]:
    d = _t(version, "reservation")
    d.update(
        accounts=r.accounts,
        core_count=NODE_CPUS * len(r.nodes),
        end_time=num(r.end_time),
        flags=list(r.flags),
        name=r.name,
        node_count=len(r.nodes),
        node_list=hostlist(r.nodes),
        partition=r.partition,
        start_time=num(r.start_time),
        users=r.users,
        tres=f"cpu={NODE_CPUS * len(r.nodes)}",
    )
    return d


def license_(name: str, total: int, used: int, version: str) -> dict[str, Any]:
    d = _t(version, "license")
    d.update(LicenseName=name, Total=total, Used=used, Free=total - used)
    return d


def ping(c: m.Cluster, version: str) -> dict[str, Any]:
    d = _t(version, "ping")
    d["hostname"] = "slurmctld"
    return d


def diag(c: m.Cluster, version: str, requests: int) -> dict[str, Any]:
    d = _t(version, "diag")
    now = c.now()
    for key, value in {
        "req_time": num(now),
        "req_time_start": num(c.start_time),
        "server_thread_count": 3,
        "jobs_submitted": c.jobs_submitted,
        "jobs_started": c.jobs_started,
        "jobs_completed": c.jobs_completed,
        "jobs_canceled": c.jobs_canceled,
        "jobs_failed": c.jobs_failed,
        "jobs_pending": sum(1 for j in c.jobs.values() if j.state == "PENDING"),
        "jobs_running": sum(1 for j in c.jobs.values() if j.state == "RUNNING"),
        "job_states_ts": num(c.changed["jobs"]),
        "bf_when_last_cycle": num(c.last_backfill),
    }.items():
        if key in d:
            d[key] = value
    d["rpcs_by_message_type"] = [
        {
            "type_id": 2003,
            "message_type": "REQUEST_JOB_INFO",
            "count": requests,
            "queued": 0,
            "dropped": 0,
            "cycle_last": 0,
            "cycle_max": 0,
            "total_time": requests * 400,
            "average_time": num(400),
        }
    ]
    return d


def shares(
    c: m.Cluster,
    version: str,
    users: set[str] | None,
    accounts: set[str] | None,
    visible: set[int] | None = None,
) -> dict[str, Any]:
    """``visible``: the association ids PrivateData=usage leaves (None: all)."""
    d = _t(version, "shares")
    rows = []
    for a in c.associations:
        if visible is not None and a.id not in visible:
            continue
        if users is not None and a.user not in users:
            continue
        if accounts is not None and a.account not in accounts:
            continue
        rows.append(
            {
                "id": a.id,
                "cluster": c.config.cluster_name,
                "name": a.user or a.account,
                "parent": a.parent if not a.user else a.account,
                "partition": a.partition,
                "shares_normalized": num(1.0 / max(1, len(c.associations))),
                "shares": num(a.shares),
                "tres": {"run_seconds": [], "group_minutes": [], "usage": []},
                "effective_usage": num(0.0),
                "usage_normalized": num(0.0),
                "usage": 0,
                "fairshare": {"factor": num(0.5), "level": num(1.0)},
                "type": ["USER"] if a.user else ["ASSOCIATION"],
            }
        )
    d["shares"] = rows
    d["total_shares"] = len(rows)
    return d


# ------------------------------------------------------------------ slurmdb
def db_job(j: Job, c: m.Cluster, version: str) -> dict[str, Any]:
    started = j.start_time > 0
    d = _t(version, "db_job_completed" if started else "db_job_pending")
    d["account"] = j.account
    d["allocation_nodes"] = len(j.nodes)
    d["array"]["job_id"] = j.array_job_id
    d["array"]["task_id"] = num(j.array_task_id) if j.array_task_id is not None else UNSET
    d["association"] = {
        "account": j.account,
        "cluster": c.config.cluster_name,
        "partition": "",
        "user": j.user,
        "id": 0,
    }
    d["cluster"] = c.config.cluster_name
    t = d["time"]
    end = j.end_time if j.finished else 0
    t["elapsed"] = max(0, (end or c.now()) - j.start_time) if started else 0
    t["eligible"] = j.submit_time
    t["end"] = end
    t["start"] = j.start_time
    t["submission"] = j.submit_time
    t["limit"] = num(j.time_limit)
    d["exit_code"] = _exit(j.exit_code, j.state)
    d["group"] = j.user
    d["job_id"] = j.job_id
    d["name"] = j.name
    d["nodes"] = hostlist(j.nodes) or "None assigned"
    d["partition"] = j.partition
    d["priority"] = num(j.priority)
    d["qos"] = j.qos
    d["required"]["CPUs"] = j.cpus
    d["state"] = {"current": [j.state], "reason": j.reason}
    d["stdout"] = j.std_out
    d["stdout_expanded"] = j.std_out.replace("%j", str(j.job_id))
    d["submit_line"] = f"sbatch --ntasks {j.cpus} --time {j.time_limit} {j.name}.sh"
    d["user"] = j.user
    d["working_directory"] = j.cwd
    for step in d.get("steps", []):
        step["nodes"]["list"] = list(j.nodes)
        step["nodes"]["count"] = len(j.nodes)
        step["nodes"]["range"] = hostlist(j.nodes)
        step["state"] = [j.state]
        step["step"]["id"] = f"{j.job_id}.batch"
    return d


def db_user(u: User, c: m.Cluster, version: str) -> dict[str, Any]:
    d = _t(version, "user")
    d["administrator_level"] = [u.admin_level]
    d["associations"] = [
        {
            "account": a.account,
            "cluster": c.config.cluster_name,
            "partition": a.partition,
            "user": u.name,
            "id": a.id,
        }
        for a in c.associations
        if a.user == u.name
    ]
    d["default"] = {"account": u.default_account, "wckey": ""}
    d["name"] = u.name
    return d


def db_account(a: Account, c: m.Cluster, version: str) -> dict[str, Any]:
    d = _t(version, "account")
    d["associations"] = []
    d["coordinators"] = []
    d["description"] = a.description
    d["name"] = a.name
    d["organization"] = a.organization
    return d


def db_association(a: Association, c: m.Cluster, version: str) -> dict[str, Any]:
    d = _t(version, "association")
    d["account"] = a.account
    d["cluster"] = c.config.cluster_name
    d["id"] = a.id
    d["is_default"] = bool(a.user) and c.account_of(a.user) == a.account
    d["lineage"] = f"/{a.account}/" + (f"0-{a.user}/" if a.user else "")
    d["parent_account"] = a.parent
    d["partition"] = a.partition
    d["qos"] = list(a.qos)
    d["shares_raw"] = a.shares
    d["user"] = a.user
    return d


def db_qos(q: Qos, c: m.Cluster, version: str) -> dict[str, Any]:
    d = _t(version, "qos")
    d["description"] = q.description
    d["id"] = q.id
    d["name"] = q.name
    d["priority"] = num(q.priority)
    return d


def db_tres(c: m.Cluster, version: str) -> list[dict[str, Any]]:
    from cacheproxy.simulator.render38 import db_tres as tres38

    return tres38(c)


def db_cluster(c: m.Cluster, version: str) -> dict[str, Any]:
    d = _t(version, "cluster")
    d["controller"] = {"host": "127.0.0.1", "port": 6817}
    d["name"] = c.config.cluster_name
    d["nodes"] = hostlist(c.nodes)
    d["rpc_version"] = 11008 if version == "v0.0.43" else 11264
    d["tres"] = db_tres(c, version)
    d["associations"]["root"]["cluster"] = c.config.cluster_name
    d["associations"]["root"]["account"] = "root"
    return d


def db_diag(c: m.Cluster, version: str) -> dict[str, Any]:
    d = _t(version, "db_diag")
    d["time_start"] = c.start_time
    return d
