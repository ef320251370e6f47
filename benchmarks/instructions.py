"""Instructions per request, counted by callgrind: a hot-path figure that a
shared, drifting machine cannot blur.

CPU time per request on a 2-core VM drifts by a third from minute to minute
(``hit_bench.py`` and ``forward_bench.py`` repeat rounds and take medians for
that reason).  valgrind's callgrind counts the instructions a process runs:
the same code serving the same requests gives the same count whatever else
the machine is doing, so a change to the hot path is measured exactly, A
against B.  Two limits: the kernel's share (system calls: reads and writes
on the sockets) is not counted (``strace -c -f -p PID`` counts those), and
instructions are not time (cache misses and branch mispredictions cost
cycles that no count shows).

Each target runs alone under callgrind, with counting off while it starts
and warms up (``--instr-atstart=no``), then on for exactly ``--requests``
GETs sent over 50 keep-alive connections; the count is divided by the
requests.  The upstream (``fixed_upstream.py``) runs outside valgrind.

Targets:
  bare     the bare uvicorn app (uvloop, httptools) serving a fixed body
  hit      ``cacheproxy serve`` answering a fresh hit (in-process tier)
  redis    the same with the Redis tier (a redis-server of its own, outside
           valgrind; its instructions are not counted)
  forward  ``cacheproxy serve`` passing through a GET no rule caches
  miss     ``cacheproxy serve`` with a rule that caches the same GET for a
           microsecond: each request a miss (fetched, stored) or coalesced
  minimal  forward_bench's minimal forwarder over the transport (aiohttp)

Usage (needs Debian's valgrind)::

    .venv/bin/python benchmarks/instructions.py
    .venv/bin/python benchmarks/instructions.py --targets hit,redis,forward --requests 4000
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from hit_bench import free_port, wait_http  # noqa: E402
from proxy_apps import MISS_RULES  # noqa: E402

PY = sys.executable
HEADERS = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": "t"}
HIT_PATH = "/slurm/v0.0.43/jobs"
"""Cached by benchmarks/bench_rules.toml."""
FORWARD_PATH = "/slurm/v0.0.38/bench/2048"
"""No rule: passed through."""
CONNECTIONS = 50
WARMUP = 400


async def load(port: int, path: str, requests: int) -> None:
    """Exactly ``requests`` GETs over CONNECTIONS keep-alive connections."""
    head = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    raw = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}\r\n".encode()

    async def one(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(raw)
            response_head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in response_head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
        writer.close()

    share, extra = divmod(requests, CONNECTIONS)
    await asyncio.gather(*(one(share + (i < extra)) for i in range(CONNECTIONS)))


def target_argv(
    name: str, port: int, upstream: int, size: int, redis_port: int, workdir: Path
) -> tuple[list[str], str]:
    """The command serving ``name`` on ``port``, and the path to request."""
    up = f"http://127.0.0.1:{upstream}"
    serve = [PY, "-m", "cacheproxy", "serve", "--upstream", up, "--port", str(port)]
    serve += ["--log-level", "warning"]
    if name == "bare":
        cmd = [PY, str(HERE / "fixed_upstream.py"), "--port", str(port), "--size", str(size)]
        return cmd, HIT_PATH
    rules = ["--auth-ttl", "3600", "--config", str(HERE / "bench_rules.toml")]
    if name == "hit":
        return [*serve, *rules], HIT_PATH
    if name == "redis":
        return [*serve, *rules, "--redis-url", f"redis://127.0.0.1:{redis_port}/0"], HIT_PATH
    if name == "forward":
        return serve, FORWARD_PATH
    if name == "miss":
        miss_rules = workdir / "miss_rules.toml"
        miss_rules.write_text(MISS_RULES)
        return [*serve, "--config", str(miss_rules)], FORWARD_PATH
    if name == "minimal":
        cmd = [PY, str(HERE / "forward_bench.py"), "serve-forwarder", "--kind", "aiohttp"]
        return [*cmd, "--upstream", up, "--port", str(port)], FORWARD_PATH
    raise SystemExit(f"unknown target {name!r}")


def count(
    name: str, upstream: int, args: argparse.Namespace, workdir: Path, redis_port: int
) -> int:
    """Instructions the target ran for ``args.requests`` requests."""
    port = free_port()
    argv, path = target_argv(name, port, upstream, args.size, redis_port, workdir)
    out = workdir / f"cg.{name}"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    valgrind.append(f"--callgrind-out-file={out}")
    proc = subprocess.Popen(
        [*valgrind, *argv],
        cwd=HERE.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}{path}", timeout=180)
        asyncio.run(load(port, path, WARMUP))
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(proc.pid)], check=True, capture_output=True)
        asyncio.run(load(port, path, args.requests))
        subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    dump = Path(f"{out}.1")
    match = re.search(r"^summary: (\d+)$", dump.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary line in {dump}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--targets", default="bare,hit,redis,minimal,forward")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--size", type=int, default=2048, help="body size of the upstream")
    args = p.parse_args(argv)
    tools = ["valgrind", "callgrind_control"]
    if "redis" in args.targets.split(","):
        tools.append("redis-server")
    for tool in tools:
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install valgrind redis-server", file=sys.stderr)
            return 2
    upstream_port = free_port()
    upstream_argv = [PY, str(HERE / "fixed_upstream.py"), "--port", str(upstream_port)]
    upstream = subprocess.Popen(
        [*upstream_argv, "--size", str(args.size)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, float] = {}
    redis_port = free_port()
    redis = None
    try:
        wait_http(f"http://127.0.0.1:{upstream_port}{HIT_PATH}", timeout=30)
        with tempfile.TemporaryDirectory(prefix="instructions-") as d:
            if "redis" in args.targets.split(","):
                redis_argv = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
                redis = subprocess.Popen(
                    [*redis_argv, "--save", "", "--appendonly", "no", "--dir", d],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            for name in args.targets.split(","):
                per_request = count(name, upstream_port, args, Path(d), redis_port) / args.requests
                results[name] = per_request
                print(f"{name:8} {per_request:10,.0f} instructions per request", flush=True)
    finally:
        for proc in (upstream, redis):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    print()
    print(f"{args.requests} requests per target, {args.size} B bodies")
    print("| target | instructions per request |")
    print("|---|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:,.0f} |")
    for target, base in (("hit", "bare"), ("redis", "bare"), ("forward", "minimal")):
        if target in results and base in results:
            share = results[base] / results[target]
            print(f"{base} / {target}: {share:.0%} (instructions only; system calls not counted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
