"""Hit-path benchmark (issue 8): how close is a cache hit to a bare ASGI app?

In one run, with the same payloads (2 KiB, 200 KiB, 5 MiB by default), wrk
(-t1 -c50, one core) drives, each pinned to the other core:
  * bare:   a raw ASGI callable under uvicorn returning the body;
  * proxy:  cacheproxy (in-process tier), every request a hit;
  * redis:  cacheproxy with the Redis tier (if redis-server is installed);
  * nginx:  nginx proxy_cache keyed on the user and token (if installed).
Prints req/s, the server's CPU per request (utime+stime from /proc, robust
when the machine is busy) and both ratios to bare.  Bounded: --seconds per target.

    .venv/bin/python benchmarks/hit_bench.py [--seconds 5] [--sizes 2048,204800] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from forward_bench import tree_cpu_seconds

HERE = Path(__file__).resolve().parent
PY = sys.executable
PATH = "/slurm/v0.0.43/jobs"
HEADERS = {"X-SLURM-USER-NAME": "bench", "X-SLURM-USER-TOKEN": "bench-token"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers=HEADERS)
            with urllib.request.urlopen(req, timeout=2) as r:
                r.read()
                return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start(cmd: list[str], core: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", str(core), *cmd]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wrk(url: str, seconds: int, core: int) -> tuple[float, int]:
    """req/s and the number of requests wrk completed."""
    cmd = ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency"]
    for k, v in HEADERS.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url)
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", str(core), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    return (float(rate.group(1)) if rate else 0.0), (int(done.group(1)) if done else 0)


NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  proxy_cache_path {tmp}/cache levels=1:2 keys_zone=c:10m max_size=1g;
  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache c;
      proxy_cache_key "$http_x_slurm_user_name|$http_x_slurm_user_token|$request_uri";
      proxy_cache_valid 200 60s;
      proxy_cache_lock on;
      proxy_ignore_headers Cache-Control Expires;
    }}
  }}
}}
"""


def bench_size(size: int, seconds: int, targets: list[str]) -> dict[str, tuple[float, float]]:
    """Per target: req/s, and the server's CPU microseconds per request."""
    results: dict[str, tuple[float, float]] = {}
    up_port = free_port()
    upstream = start(
        [PY, str(HERE / "fixed_upstream.py"), "--port", str(up_port), "--size", str(size)], core=1
    )
    try:
        wait_http(f"http://127.0.0.1:{up_port}{PATH}")
        for target in targets:
            port = free_port()
            tmp = tempfile.mkdtemp(prefix="hitbench-")
            redis = None
            env = dict(os.environ)
            if target == "bare":
                cmd = [
                    PY,
                    str(HERE / "fixed_upstream.py"),
                    "--port",
                    str(port),
                    "--size",
                    str(size),
                ]
            elif target in ("proxy", "redis"):
                cmd = [
                    PY,
                    "-m",
                    "cacheproxy",
                    "serve",
                    "--upstream",
                    f"http://127.0.0.1:{up_port}",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--auth-ttl",
                    "3600",
                    "--config",
                    str(HERE / "bench_rules.toml"),
                ]
                if target == "redis":
                    rport = free_port()
                    redis = start(
                        [
                            "redis-server",
                            "--port",
                            str(rport),
                            "--bind",
                            "127.0.0.1",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            tmp,
                        ],
                        core=1,
                    )
                    time.sleep(0.5)
                    cmd += ["--redis-url", f"redis://127.0.0.1:{rport}/0"]
            elif target == "nginx":
                conf = Path(tmp) / "nginx.conf"
                # as root, workers would run as nobody and could not write the cache
                user = "user root;" if os.geteuid() == 0 else ""
                conf.write_text(NGINX_CONF.format(user=user, tmp=tmp, up=up_port, port=port))
                cmd = ["nginx", "-c", str(conf), "-p", tmp]
            else:
                raise ValueError(target)
            proc = start(cmd, core=0, env=env)
            try:
                wait_http(f"http://127.0.0.1:{port}{PATH}")
                wrk(f"http://127.0.0.1:{port}{PATH}", 1, core=1)  # warm up
                before = tree_cpu_seconds(proc.pid)
                rate, done = wrk(f"http://127.0.0.1:{port}{PATH}", seconds, core=1)
                cpu = tree_cpu_seconds(proc.pid) - before
                results[target] = (rate, cpu / done * 1e6 if done else 0.0)
            finally:
                stop(proc)
                if redis is not None:
                    stop(redis)
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        stop(upstream)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--sizes", default="2048,204800,5242880")
    p.add_argument("--targets", default="bare,proxy,redis,nginx")
    p.add_argument("--repeat", type=int, default=1, help="rounds per size (medians printed)")
    a = p.parse_args()
    targets = [t for t in a.targets.split(",") if t]
    if "redis" in targets and not shutil.which("redis-server"):
        targets.remove("redis")
    if "nginx" in targets and not shutil.which("nginx"):
        targets.remove("nginx")
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    print(f"machine: {os.cpu_count()} cores, {cpu}; wrk -t1 -c50 -d{a.seconds}s")
    print("req/s (server CPU us per request); ratios: req/s, and bare's CPU / target's CPU")
    print(f"{'size':>9} " + " ".join(f"{t:>15}" for t in targets) + "   ratios to bare")
    for size in (int(s) for s in a.sizes.split(",")):
        rounds = [bench_size(size, a.seconds, targets) for _ in range(a.repeat)]
        for i, r in enumerate(rounds):
            label = str(size) if a.repeat == 1 else f"{size}#{i + 1}"
            print(f"{label:>9} {cells(r, targets)}   {ratios(r, targets)}", flush=True)
        if a.repeat > 1:
            # The median of each round's ratio: every round compares targets
            # run back to back, so a slow minute on a shared box cancels out.
            med = {
                t: (
                    statistics.median(r[t][0] for r in rounds),
                    statistics.median(r[t][1] for r in rounds),
                )
                for t in targets
                if all(t in r for r in rounds)
            }
            rate_ratio = {t: _median_ratio(rounds, t, 0) for t in targets if t != "bare"}
            cpu_ratio = {t: _median_ratio(rounds, t, 1) for t in targets if t != "bare"}
            summary = " ".join(
                f"{t}={rate_ratio[t]:.0%}/{cpu_ratio[t]:.0%}"
                for t in targets
                if t != "bare" and rate_ratio.get(t) and cpu_ratio.get(t)
            )
            print(f"{'median':>9} {cells(med, targets)}   {summary}", flush=True)


def cells(r: dict[str, tuple[float, float]], targets: list[str]) -> str:
    return " ".join(
        f"{r[t][0]:>7.0f} ({r[t][1]:>4.0f})" if t in r else f"{'-':>15}" for t in targets
    )


def ratios(r: dict[str, tuple[float, float]], targets: list[str]) -> str:
    bare_rate, bare_cpu = r.get("bare", (0.0, 0.0))
    return " ".join(
        f"{t}={r[t][0] / bare_rate:.0%}/{bare_cpu / r[t][1]:.0%}"
        for t in targets
        if t != "bare" and bare_rate and t in r and r[t][1]
    )


def _median_ratio(rounds: list[dict[str, tuple[float, float]]], target: str, field: int) -> float:
    """Median over rounds of target/bare (req/s) or bare/target (CPU)."""
    values = []
    for r in rounds:
        if target not in r or "bare" not in r or not r["bare"][field] or not r[target][field]:
            continue
        a, b = r[target][field], r["bare"][field]
        values.append(a / b if field == 0 else b / a)
    return statistics.median(values) if values else 0.0


if __name__ == "__main__":
    main()
