"""``update_time``: 22.05 answers a bare 304, 25.x an empty job list or 304."""

from __future__ import annotations

import socket

import httpx

from cacheproxy.simulator import running_simulator_process
from tests.simulator.conftest import ROOT, Running

FUTURE = 4102444800


def _raw_get(url: str, path: str, count: int = 1) -> list[bytes]:
    """Send ``count`` GETs on one keep-alive connection; return each head+body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    out = []
    with socket.create_connection((host, int(port)), timeout=30) as s:
        for _ in range(count):
            req = (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                "X-SLURM-USER-NAME: root\r\nX-SLURM-USER-TOKEN: sim-token-root\r\n\r\n"
            ).encode()
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                assert chunk, "connection closed"
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                rest += s.recv(65536)
            out.append(head + b"\r\n\r\n" + rest)
    return out


def test_2205_bare_304_on_the_wire() -> None:
    with running_simulator_process(
        "--cost-model", "none", "--jobs", "20", "--nodes", "8", "--job-speed", "0"
    ) as url:
        first, second = _raw_get(url, f"/slurm/v0.0.38/jobs?update_time={FUTURE}", count=2)
        # exactly what slurmrestd 22.05 sends: status line, no header, no body
        assert first == b"HTTP/1.1 304 NOT MODIFIED\r\n\r\n"
        # and the connection stays usable
        assert second == first
        (full,) = _raw_get(url, "/slurm/v0.0.38/jobs?update_time=1")
        assert full.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b'"jobs": [' in full


def test_2205_304_in_process_has_no_headers(sim: Running) -> None:
    (resp,) = _raw_get(sim.url, f"/slurm/v0.0.38/nodes?update_time={FUTURE}")
    status, _, rest = resp.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 304 ")
    assert rest == b"\r\n"


def test_2205_full_list_when_changed(client: httpx.Client, sim: Running) -> None:
    for path in ("jobs", "nodes", "partitions"):
        r = client.get(f"/slurm/v0.0.38/{path}?update_time={FUTURE}", headers=ROOT)
        assert r.status_code == 304
        assert r.content == b""
        r = client.get(f"/slurm/v0.0.38/{path}?update_time=1", headers=ROOT)
        assert r.status_code == 200
        assert r.json()[path]
    before = sim.app.cluster.changed["jobs"]
    r = client.get(f"/slurm/v0.0.38/jobs?update_time={before + 1}", headers=ROOT)
    assert r.status_code == 304
    job = next(iter(sim.app.cluster.jobs.values()))
    client.delete(f"/slurm/v0.0.38/job/{job.job_id}", headers=ROOT)
    # slurmctld's rule: "(update_time - 1) >= last change" means unchanged
    changed = sim.app.cluster.changed["jobs"]
    assert client.get(f"/slurm/v0.0.38/jobs?update_time={changed}", headers=ROOT).status_code == 200
    assert (
        client.get(f"/slurm/v0.0.38/jobs?update_time={changed + 1}", headers=ROOT).status_code
        == 304
    )


def test_25x_jobs_empty_with_warning(client: httpx.Client) -> None:
    r = client.get(f"/slurm/v0.0.43/jobs?update_time={FUTURE}", headers=ROOT)
    assert r.status_code == 200
    body = r.json()
    assert body["jobs"] == []
    assert body["last_update"] == {"set": True, "infinite": False, "number": 0}
    assert body["last_backfill"]["number"] == 0
    assert body["warnings"][0]["description"].startswith(
        f"No job changes since update_time[{FUTURE}]"
    )
    full = client.get("/slurm/v0.0.43/jobs?update_time=1", headers=ROOT).json()
    assert full["jobs"]
    assert full["last_update"]["number"] > 0


def test_25x_other_lists_304(client: httpx.Client) -> None:
    for path in ("nodes", "partitions", "reservations"):
        r = client.get(f"/slurm/v0.0.44/{path}?update_time={FUTURE}", headers=ROOT)
        assert r.status_code == 304
        assert r.content == b""
    # job/{id} and node/{name} ignore update_time on 25.x
    assert (
        client.get(f"/slurm/v0.0.44/node/cn001?update_time={FUTURE}", headers=ROOT).status_code
        == 200
    )
