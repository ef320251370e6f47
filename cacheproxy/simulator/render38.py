"""Item shapes of slurmrestd 22.05 (openapi/v0.0.38, dbv0.0.38).

Plain integers (``null`` for unset), string states, lower-case node states.
Each function starts from a template captured from a real daemon (or built
from the spec) and overwrites what the simulation varies.
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
from cacheproxy.simulator.templates import fresh

META: dict[str, Any] = {
    "plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
    "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"},
}
DB_META: dict[str, Any] = {
    "plugin": {"type": "openapi/dbv0.0.38", "name": "Slurm OpenAPI DB v0.0.38"},
    "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"},
}


def _tres(job: Job) -> str:
    mem = job.cpus * 512
    mem_s = f"{mem // 1024}G" if mem % 1024 == 0 else f"{mem}M"
    return f"cpu={job.cpus},mem={mem_s},node={job.node_count},billing={job.cpus}"


def _cores(count: int) -> list[tuple[int, list[int]]]:
    """Spread ``count`` cores over the sockets of a node, socket 0 first."""
    out = []
    left = count
    for s in range(SOCKETS):
        take = min(left, CORES_PER_SOCKET)
        if take:
            out.append((s, list(range(take))))
        left -= take
    return out


def job(j: Job, c: m.Cluster) -> dict[str, Any]:
    d = fresh("v38_job")
    running_or_done = bool(j.nodes) and j.start_time > 0
    d["account"] = j.account
    d["accrue_time"] = j.submit_time
    d["array_job_id"] = j.array_job_id
    d["array_task_id"] = j.array_task_id
    d["association_id"] = 0
    d["batch_host"] = j.nodes[0] if running_or_done else ""
    d["flags"] = ["JOB_WAS_RUNNING"] if j.start_time else ["TRES_STR_CALC"]
    d["cluster"] = c.config.cluster_name
    d["comment"] = j.comment
    d["eligible_time"] = j.submit_time
    d["end_time"] = j.end_time
    d["exit_code"] = j.exit_code
    d["group_id"] = j.uid
    d["group_name"] = j.user
    d["job_id"] = j.job_id
    if running_or_done:
        per_node = max(1, j.cpus // max(1, j.node_count))
        d["job_resources"] = {
            "nodes": hostlist(j.nodes),
            "allocated_cores": per_node * len(j.nodes),
            "allocated_hosts": len(j.nodes),
            "allocated_nodes": [
                {
                    "sockets": {
                        str(s): {"cores": {str(core): "allocated" for core in cores}}
                        for s, cores in _cores(per_node)
                    },
                    "nodename": name,
                    "cpus_used": 0,
                    "memory_used": 0,
                    "memory_allocated": per_node * 512,
                }
                for name in j.nodes
            ],
        }
    else:
        d["job_resources"] = {}
    d["job_state"] = j.state
    d["last_sched_evaluation"] = j.start_time or j.submit_time
    d["licenses"] = j.licenses
    d["name"] = j.name
    d["nodes"] = hostlist(j.nodes)
    d["cpus"] = j.cpus
    d["node_count"] = j.node_count
    d["tasks"] = j.cpus
    d["partition"] = j.partition
    d["memory_per_cpu"] = 512
    d["priority"] = j.priority
    d["qos"] = j.qos
    d["start_time"] = j.start_time
    d["state_reason"] = j.reason
    d["standard_output"] = j.std_out
    d["submit_time"] = j.submit_time
    d["time_limit"] = j.time_limit
    d["tres_req_str"] = _tres(j)
    d["tres_alloc_str"] = _tres(j) if running_or_done else ""
    d["user_id"] = j.uid
    d["user_name"] = j.user
    d["current_working_directory"] = j.cwd
    return d


def node(n: Node, c: m.Cluster) -> dict[str, Any]:
    d = fresh("v38_node")
    d["boot_time"] = n.boot_time
    d["cores"] = CORES_PER_SOCKET
    d["sockets"] = SOCKETS
    d["cpus"] = NODE_CPUS
    d["cpu_load"] = n.cpu_load
    d["free_memory"] = NODE_MEMORY_MB - n.alloc_memory
    d["last_busy"] = c.start_time
    d["name"] = d["hostname"] = d["address"] = n.name
    d["state"] = n.base_state.lower()
    d["state_flags"] = ["DRAIN"] if n.admin_state == "DRAIN" else []
    d["partitions"] = list(n.partitions)
    d["real_memory"] = NODE_MEMORY_MB
    d["reason"] = n.reason
    d["reason_changed_at"] = n.reason_time
    d["reason_set_by_user"] = n.reason_user or None
    d["slurmd_start_time"] = n.boot_time + 60
    d["tres"] = f"cpu={NODE_CPUS},mem={NODE_MEMORY_MB // 1024}G,billing={NODE_CPUS}"
    d["alloc_memory"] = n.alloc_memory
    d["alloc_cpus"] = n.alloc_cpus
    d["idle_cpus"] = NODE_CPUS - n.alloc_cpus
    d["tres_used"] = f"cpu={n.alloc_cpus}" if n.alloc_cpus else None
    return d


def partition(p: Partition, c: m.Cluster) -> dict[str, Any]:
    d = fresh("v38_partition")
    d["flags"] = ["default"] if p.default else []
    d["max_time_limit"] = p.max_time
    d["name"] = p.name
    d["nodes"] = hostlist(p.nodes)
    d["state"] = p.state
    d["total_cpus"] = NODE_CPUS * len(p.nodes)
    d["total_nodes"] = len(p.nodes)
    mem_g = NODE_MEMORY_MB // 1024 * len(p.nodes)
    d["tres"] = f"cpu={d['total_cpus']},mem={mem_g}G,node={len(p.nodes)},billing={d['total_cpus']}"
    return d


def reservation(r: Reservation, c: m.Cluster) -> dict[str, Any]:
    d = fresh("v38_reservation")
    d.update(
        accounts=r.accounts,
        core_count=NODE_CPUS * len(r.nodes),
        end_time=r.end_time,
        flags=list(r.flags),
        name=r.name,
        node_count=len(r.nodes),
        node_list=hostlist(r.nodes),
        partition=r.partition,
        start_time=r.start_time,
        users=r.users,
    )
    return d


def license_(name: str, total: int, used: int) -> dict[str, Any]:
    d = fresh("v38_license")
    d.update(LicenseName=name, Total=total, Used=used, Free=total - used, Reserved=0)
    return d


def ping(c: m.Cluster) -> dict[str, Any]:
    d = fresh("v38_ping")
    d["hostname"] = "slurmctld"
    return d


def diag(c: m.Cluster, requests: int) -> dict[str, Any]:
    d = fresh("v38_diag")
    now = c.now()
    d.update(
        req_time=now,
        req_time_start=c.start_time,
        server_thread_count=3,
        jobs_submitted=c.jobs_submitted,
        jobs_started=c.jobs_started,
        jobs_completed=c.jobs_completed,
        jobs_canceled=c.jobs_canceled,
        jobs_failed=c.jobs_failed,
        jobs_pending=sum(1 for j in c.jobs.values() if j.state == "PENDING"),
        jobs_running=sum(1 for j in c.jobs.values() if j.state == "RUNNING"),
        job_states_ts=c.changed["jobs"],
        bf_when_last_cycle=c.last_backfill,
    )
    for row in d.get("rpcs_by_message_type", []):
        if row.get("message_type") == "REQUEST_JOB_INFO":
            row["count"] = requests
    return d


# ------------------------------------------------------------------ slurmdb
def _exit(code: int, state: str) -> dict[str, Any]:
    return {
        "status": "SUCCESS" if code == 0 else "FAILED",
        "return_code": code,
        "signal": {"signal_id": 15 if state == "CANCELLED" else 0, "name": ""},
    }


def db_job(j: Job, c: m.Cluster) -> dict[str, Any]:
    d = fresh("v38_db_job")
    d["account"] = j.account
    d["allocation_nodes"] = str(len(j.nodes))
    d["array"]["job_id"] = j.array_job_id
    d["array"]["task_id"] = j.array_task_id if j.array_task_id is not None else 4294967294
    t = d["time"]
    t["elapsed"] = (
        max(0, (j.end_time if j.finished else c.now()) - j.start_time) if j.start_time else 0
    )
    t["eligible"] = j.submit_time
    t["end"] = j.end_time if j.finished else 0
    t["start"] = j.start_time
    t["submission"] = j.submit_time
    t["limit"] = j.time_limit
    d["association"] = {
        "account": j.account,
        "cluster": c.config.cluster_name,
        "partition": "",
        "user": j.user,
    }
    d["cluster"] = c.config.cluster_name
    d["derived_exit_code"] = _exit(0, j.state)
    d["exit_code"] = _exit(j.exit_code, j.state)
    d["group"] = j.user
    d["job_id"] = j.job_id
    d["name"] = j.name
    d["nodes"] = hostlist(j.nodes) or "None assigned"
    d["partition"] = j.partition
    d["priority"] = j.priority
    d["qos"] = j.qos
    d["required"] = {"CPUs": j.cpus, "memory": j.cpus * 512}
    d["state"] = {"current": j.state, "reason": j.reason}
    tres = [
        {"type": "cpu", "name": "", "id": 1, "count": j.cpus},
        {"type": "mem", "name": "", "id": 2, "count": j.cpus * 512},
        {"type": "node", "name": "", "id": 4, "count": j.node_count},
        {"type": "billing", "name": "", "id": 5, "count": j.cpus},
    ]
    d["tres"] = {"allocated": tres if j.start_time else [], "requested": tres}
    d["user"] = j.user
    d["working_directory"] = j.cwd
    if j.start_time:
        step = fresh("v38_db_job_step")
        step["time"].update(start=j.start_time, end=t["end"], elapsed=t["elapsed"])
        step["exit_code"] = _exit(j.exit_code, j.state)
        step["nodes"] = {"count": len(j.nodes), "range": hostlist(j.nodes)}
        step["tasks"] = {"count": 1}
        step["state"] = j.state
        step["step"] = {
            "job_id": j.job_id,
            "het": {"component": 4294967294},
            "id": "batch",
            "name": "batch",
        }
        d["steps"] = [step]
    return d


def db_user(u: User, c: m.Cluster) -> dict[str, Any]:
    d = fresh("v38_db_user")
    d["administrator_level"] = u.admin_level
    d["associations"] = [
        {
            "account": a.account,
            "cluster": c.config.cluster_name,
            "partition": a.partition or None,
            "user": u.name,
        }
        for a in c.associations
        if a.user == u.name
    ]
    d["default"] = {"account": u.default_account, "wckey": ""}
    d["name"] = u.name
    return d


def db_account(a: Account, c: m.Cluster) -> dict[str, Any]:
    d = fresh("v38_db_account")
    d["associations"] = [
        {
            "account": a.name,
            "cluster": c.config.cluster_name,
            "partition": x.partition or None,
            "user": x.user or None,
        }
        for x in c.associations
        if x.account == a.name
    ]
    d["description"] = a.description
    d["name"] = a.name
    d["organization"] = a.organization
    return d


def db_association(a: Association, c: m.Cluster) -> dict[str, Any]:
    """As 22.05's dbv0.0.37 parse.c dumps one: unset strings and numbers
    ``null`` (``_dump_to_string``, ``_dump_to_uint32`` on NULL / NO_VAL), the
    QOS list by id, as strings (``_dump_qos_str_list``)."""
    d = fresh("v38_db_association")
    d["account"] = a.account
    d["cluster"] = c.config.cluster_name
    d["parent_account"] = a.parent or None
    d["partition"] = a.partition or None
    d["qos"] = [str(c.qos[q].id) if q in c.qos else q for q in a.qos]
    d["shares_raw"] = a.shares
    d["user"] = a.user or None
    return d


def db_qos(q: Qos, c: m.Cluster) -> dict[str, Any]:
    d = fresh("v38_db_qos")
    d["description"] = q.description
    d["id"] = q.id
    d["name"] = q.name
    if isinstance(d.get("priority"), int):
        d["priority"] = q.priority
    return d


TRES = [
    ("cpu", "", 1),
    ("mem", "", 2),
    ("energy", "", 3),
    ("node", "", 4),
    ("billing", "", 5),
    ("fs", "disk", 6),
    ("vmem", "", 7),
    ("pages", "", 8),
]


def db_tres(c: m.Cluster) -> list[dict[str, Any]]:
    counts = {
        "cpu": NODE_CPUS * len(c.nodes),
        "mem": NODE_MEMORY_MB * len(c.nodes),
        "node": len(c.nodes),
    }
    return [{"type": t, "name": n, "id": i, "count": counts.get(t, 0)} for t, n, i in TRES]


def db_cluster(c: m.Cluster) -> dict[str, Any]:
    d = fresh("v38_db_cluster_info")
    d["name"] = c.config.cluster_name
    if isinstance(d.get("controller"), dict):
        d["controller"] = {"host": "127.0.0.1", "port": 6817}
    d["nodes"] = hostlist(c.nodes)
    d["rpc_version"] = 9728
    return d


def db_diag(c: m.Cluster) -> dict[str, Any]:
    d = fresh("v38_db_diag")
    if "time_start" in d:
        d["time_start"] = c.start_time
    return d
