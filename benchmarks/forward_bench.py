"""What forwarding one request costs: upstream direct vs nginx vs our transport.

Every miss, write and uncacheable GET is forwarded to slurmrestd, so the CPU a
forwarder spends per request bounds the proxy's miss throughput.  This
benchmark measures it the same way for every candidate:

* a fast upstream (nginx serving static files, or a raw uvicorn app when nginx
  is missing) on the *load* core, next to ``wrk``;
* the forwarder under test alone on the *proxy* core (``taskset``): nginx
  ``proxy_pass``, a minimal raw-ASGI forwarder under uvicorn (uvloop +
  httptools) over each transport, httpx for reference, or any command or ASGI
  app factory you name (the full proxy);
* ``wrk -t1 -c50 -d5s --latency`` per target and body size; the forwarder's
  CPU time comes from ``/proc/<pid>/stat`` (utime+stime of its process tree)
  before and after, divided by the requests wrk completed.

Usage::

    .venv/bin/python benchmarks/forward_bench.py                 # everything
    .venv/bin/python benchmarks/forward_bench.py --targets direct,nginx,aiohttp
    .venv/bin/python benchmarks/forward_bench.py \\
        --target-cmd 'proxy={python} -m cacheproxy serve --upstream {upstream} --port {port}'
    .venv/bin/python benchmarks/forward_bench.py \\
        --target-app 'proxy=mypkg.mod:make_app'     # factory(upstream_url) -> ASGI app

``{upstream}``, ``{port}`` and ``{python}`` (this interpreter) are substituted
in ``--target-cmd``; the command is started pinned to the proxy core and must
serve plain HTTP on 127.0.0.1:{port}.  ``--target-app`` names a factory taking
the upstream URL.  ``--path`` and ``--header`` shape the requests (the
upstream answers any path ending in ``/<size>``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cacheproxy.upstream.base import (  # noqa: E402
    Headers,
    Transport,
    UpstreamError,
    UpstreamRequest,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLK_TCK = os.sysconf("SC_CLK_TCK")
BUILTIN_FORWARDERS = ("aiohttp", "httpx", "aiohttp-untuned")
"""Minimal forwarders: a transport kind, ``-untuned`` without ``tune_malloc()``."""
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


# --- the minimal forwarder -----------------------------------------------------------


class HttpxTransport:
    """httpx.AsyncClient behind the Transport seam: the reference point only."""

    def __init__(self, url: str, max_connections: int) -> None:
        import httpx

        self._httpx = httpx
        self._client = httpx.AsyncClient(
            base_url=url,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=60.0,
        )

    async def send(self, request: UpstreamRequest) -> Any:
        req = self._client.build_request(
            request.method,
            request.target,
            headers=request.headers,
            content=request.body,
        )
        resp = await self._client.send(req, stream=True)

        class _Resp:
            status = resp.status_code
            headers: ClassVar[Headers] = [(k.lower(), v) for k, v in resp.headers.raw]

            @staticmethod
            async def aiter_body() -> AsyncIterator[bytes]:
                async for chunk in resp.aiter_raw():
                    yield chunk

            @staticmethod
            async def aclose() -> None:
                await resp.aclose()

        return _Resp()

    async def aclose(self) -> None:
        await self._client.aclose()


def make_transport(kind: str, upstream: str, max_connections: int = 64) -> Transport:
    if kind == "httpx":
        return HttpxTransport(upstream, max_connections)
    from cacheproxy.upstream import create_transport

    return create_transport(upstream, kind=kind, max_connections=max_connections)


def forwarder_app(transport_factory: Callable[[], Transport]) -> ASGIApp:
    """The least a forwarding ASGI app can do: the floor under the full proxy."""
    transport: Transport | None = None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal transport
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    transport = transport_factory()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if transport is not None:
                        await transport.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert transport is not None
        query = scope["query_string"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        target = (raw_path + b"?" + query if query else raw_path).decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
        body = b""
        if scope["method"] not in ("GET", "HEAD"):
            parts = []
            more = True
            while more:
                message = await receive()
                parts.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(parts)
        try:
            resp = await transport.send(
                UpstreamRequest(scope["method"], target, headers, body, True)
            )
        except UpstreamError:
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": b"bad gateway"})
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [(k, v) for k, v in resp.headers if k not in HOP_BY_HOP],
                }
            )
            # One chunk of look-ahead: the last chunk goes out with
            # more_body=False, sparing an empty final send per response
            # (a 2 KiB answer is then 2 ASGI sends, not 3).
            pending: bytes | None = None
            async for chunk in resp.aiter_body():
                if pending is not None:
                    await send({"type": "http.response.body", "body": pending, "more_body": True})
                pending = chunk
            await send({"type": "http.response.body", "body": pending or b""})
        finally:
            await resp.aclose()

    return app


def upstream_app(max_size: int) -> ASGIApp:
    """A fixed body per size, named by the last path segment (``/.../2048``)."""
    cache: dict[int, bytes] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        last = scope["path"].rsplit("/", 1)[-1]
        size = int(last) if last.isdigit() and int(last) <= max_size else 0
        body = cache.get(size)
        if body is None:
            body = cache[size] = body_bytes(size)
        await send(
            {
                "type": "http.response.start",
                "status": 200 if size else 404,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def body_bytes(size: int) -> bytes:
    unit = b'{"job_id": 12345, "name": "bench", "state": "RUNNING"},\n'
    return (unit * (size // len(unit) + 1))[:size]


def run_uvicorn(app: ASGIApp, port: int) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        backlog=2048,
    )


# --- processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and all its descendants, in seconds."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        total += ticks.get(p, 0)
        stack.extend(children.get(p, []))
    return total / CLK_TCK


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


NICE = 0
"""Scheduling priority for everything the benchmark starts (``--nice``)."""


def pinned(cpu: str) -> list[str]:
    """The prefix that pins a command to ``cpu`` (and sets its priority):
    both exec, so the pid we measure is the command's own."""
    prefix = ["taskset", "-c", cpu]
    if NICE:
        prefix += ["nice", "-n", str(NICE)]
    return prefix


def start(name: str, argv: list[str], port: int, cpu: str, workdir: Path) -> Proc:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [*pinned(cpu), *argv], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    return Proc(name, popen, port, log)


def wait_ready(
    proc: Proc, path: str, headers: list[str] | None = None, timeout: float = 20.0
) -> None:
    """Until ``path`` answers 200 (with the ``--header`` values wrk will send)."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{proc.port}{path}"
    hdrs = dict(h.split(":", 1) for h in headers or [])
    request = urllib.request.Request(url, headers={k.strip(): v.strip() for k, v in hdrs.items()})
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(request, timeout=1) as r:
                r.read()
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready on {url}: {proc.log.read_text()[-2000:]}")


NGINX_COMMON = """
worker_processes 1;
master_process off;
daemon off;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  default_type application/json;
  {body}
}}
"""

NGINX_STATIC = """
  server {{
    listen 127.0.0.1:{port} backlog=2048;
    listen unix:{dir}/upstream.sock backlog=2048;
    root {dir}/files;
    location ~ /(\\d+)$ {{ try_files /$1 =404; }}
  }}
"""

NGINX_PROXY = """
  upstream up {{ server {server}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=2048;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Room for a 200 KiB answer in memory: no temp files on the hot path.
      proxy_buffer_size 16k;
      proxy_buffers 32 16k;
      proxy_busy_buffers_size 64k;
    }}
  }}
"""


def start_nginx(name: str, body: str, port: int, cpu: str, workdir: Path) -> Proc:
    conf = workdir / f"{name}.conf"
    conf.write_text(NGINX_COMMON.format(dir=workdir, name=name, body=body))
    return start(
        name,
        ["nginx", "-p", str(workdir), "-e", str(workdir / f"{name}.stderr.log"), "-c", str(conf)],
        port,
        cpu,
        workdir,
    )


# --- load ----------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    size: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    errors: int
    cpu_min_us_per_req: float = 0.0
    runs: int = 1


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_latency(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> tuple[int, float, float, float, int]:
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = parse_latency(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = parse_latency(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return requests, rps, p50, p99, errors


def wrk(url: str, args: argparse.Namespace, duration: float, pid: int) -> tuple[str, float]:
    argv = [
        *pinned(args.load_cpu), "wrk",
        f"-t{args.threads}", f"-c{args.connections}", f"-d{duration:g}s", "--latency",
    ]  # fmt: skip
    for h in args.header:
        argv += ["-H", h]
    before = tree_cpu_seconds(pid)
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, timeout=duration + 30
    ).stdout
    return out, tree_cpu_seconds(pid) - before


def measure(name: str, proc: Proc, size: int, args: argparse.Namespace) -> Result:
    """One warm-up, then one measured wrk run against ``proc``."""
    url = f"http://127.0.0.1:{proc.port}{args.path.format(size=size)}"
    wrk(url, args, args.warmup, proc.popen.pid)
    out, cpu = wrk(url, args, args.duration, proc.popen.pid)
    requests, rps, p50, p99, errors = parse_wrk(out)
    per_req = cpu / max(requests, 1) * 1e6
    return Result(name, size, requests, rps, p50, p99, per_req, errors, per_req)


def combine(runs: list[Result]) -> Result:
    """Medians over rounds (and the least CPU seen: the least disturbed run on
    a shared machine)."""
    med = statistics.median
    return Result(
        runs[0].target,
        runs[0].size,
        sum(r.requests for r in runs),
        med(r.rps for r in runs),
        med(r.p50_ms for r in runs),
        med(r.p99_ms for r in runs),
        med(r.cpu_us_per_req for r in runs),
        sum(r.errors for r in runs),
        min(r.cpu_us_per_req for r in runs),
        len(runs),
    )


# --- orchestration -------------------------------------------------------------------


@dataclass
class Target:
    name: str
    launch: Callable[[str, int, Path], Proc]


def python_target(name: str, argv_tail: list[str], cpu: str) -> Target:
    def launch(upstream: str, port: int, workdir: Path) -> Proc:
        argv = [sys.executable, str(Path(__file__).resolve()), *argv_tail]
        argv += ["--upstream", upstream, "--port", str(port)]
        return start(name, argv, port, cpu, workdir)

    return Target(name, launch)


def command_target(name: str, template: str, cpu: str) -> Target:
    def launch(upstream: str, port: int, workdir: Path) -> Proc:
        argv = [
            a.format(upstream=upstream, port=port, python=sys.executable)
            for a in shlex.split(template)
        ]
        return start(name, argv, port, cpu, workdir)

    return Target(name, launch)


def nginx_target(cpu: str) -> Target:
    def launch(upstream: str, port: int, workdir: Path) -> Proc:
        if upstream.startswith("unix:"):
            server = upstream
        else:
            server = "127.0.0.1:" + upstream.rsplit(":", 1)[1]
        return start_nginx(
            "nginx-proxy", NGINX_PROXY.format(server=server, port=port), port, cpu, workdir
        )

    return Target("nginx", launch)


def named(spec: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {spec!r}")
    return name, value


def choose_targets(args: argparse.Namespace) -> list[Target]:
    wanted = args.targets.split(",") if args.targets else None
    targets: list[Target] = []

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    if want("nginx") and shutil.which("nginx"):
        targets.append(nginx_target(args.proxy_cpu))
    for kind in BUILTIN_FORWARDERS:
        if want(kind):
            targets.append(python_target(kind, ["serve-forwarder", "--kind", kind], args.proxy_cpu))
    for spec in args.target_cmd:
        name, template = named(spec)
        targets.append(command_target(name, template, args.proxy_cpu))
    for spec in args.target_app:
        name, factory = named(spec)
        targets.append(python_target(name, ["serve-app", "--factory", factory], args.proxy_cpu))
    return targets


@contextlib.contextmanager
def running_upstream(args: argparse.Namespace, workdir: Path) -> Iterator[Proc]:
    port = free_port()
    sizes = [int(s) for s in args.sizes.split(",")]
    probe = args.path.format(size=sizes[0])
    if args.upstream_kind == "nginx":
        files = workdir / "files"
        files.mkdir()
        for size in sizes:
            (files / str(size)).write_bytes(body_bytes(size))
        proc = start_nginx(
            "upstream", NGINX_STATIC.format(port=port, dir=workdir), port, args.load_cpu, workdir
        )
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "serve-upstream"]
        argv += ["--port", str(port), "--max-size", str(max(sizes))]
        proc = start("upstream", argv, port, args.load_cpu, workdir)
    try:
        wait_ready(proc, probe)
        yield proc
    finally:
        proc.stop()


def run(args: argparse.Namespace) -> list[Result]:
    """``--repeat`` rounds; each round runs every target once, in turn, so
    that a burst of load from elsewhere on the machine hits all of them
    rather than one."""
    sizes = [int(s) for s in args.sizes.split(",")]
    cells: dict[tuple[str, int], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="fwdbench-") as d:
        workdir = Path(d)
        with running_upstream(args, workdir) as upstream:
            upstream_url = f"http://127.0.0.1:{upstream.port}"
            if args.upstream_socket:
                if args.upstream_kind != "nginx":
                    raise SystemExit("--upstream-socket needs --upstream-kind nginx")
                upstream_url = f"unix:{workdir}/upstream.sock"
            targets = choose_targets(args)
            for rnd in range(args.repeat):
                print(f"# round {rnd + 1}/{args.repeat}", flush=True)
                if not args.targets or "direct" in args.targets.split(","):
                    for size in sizes:
                        r = report(measure("direct", upstream, size, args))
                        cells.setdefault((r.target, size), []).append(r)
                for target in targets:
                    port = free_port()
                    proc = target.launch(upstream_url, port, workdir)
                    try:
                        wait_ready(proc, args.path.format(size=sizes[0]), args.header)
                        for size in sizes:
                            r = report(measure(target.name, proc, size, args))
                            cells.setdefault((r.target, size), []).append(r)
                    finally:
                        proc.stop()
    return [combine(runs) for runs in cells.values()]


def report(r: Result) -> Result:
    print(
        f"{r.target:<16} {r.size:>7} B  {r.rps:>9.0f} req/s  p50 {r.p50_ms:7.2f} ms  "
        f"p99 {r.p99_ms:7.2f} ms  {r.cpu_us_per_req:7.1f} µs CPU/req"
        + (f"  ERRORS {r.errors}" if r.errors else ""),
        flush=True,
    )
    return r


def markdown(results: list[Result]) -> str:
    direct = {r.size: r for r in results if r.target == "direct"}
    lines = [
        "| target | body | req/s | p50 ms | p99 ms | CPU µs/req (median) | (least) "
        "| Δp50 vs direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        base = direct.get(r.size)
        delta = f"{r.p50_ms - base.p50_ms:+.2f}" if base and r.target != "direct" else ""
        size = f"{r.size // 1024} KiB" if r.size % 1024 == 0 else f"{r.size} B"
        lines.append(
            f"| {r.target} | {size} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.cpu_us_per_req:.1f} | {r.cpu_min_us_per_req:.1f} | {delta} |"
        )
    return "\n".join(lines)


def machine() -> str:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"nproc={os.cpu_count()}, CPU: {model}, Python {sys.version.split()[0]}"


def loadavg() -> str:
    """Other work on the machine, which a CPU-time measurement cannot exclude."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --- command line --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="cmd")

    fwd = sub.add_parser("serve-forwarder", help="(internal) run the minimal forwarder")
    fwd.add_argument("--kind", choices=BUILTIN_FORWARDERS, required=True)
    fwd.add_argument("--upstream", required=True)
    fwd.add_argument("--port", type=int, required=True)

    app = sub.add_parser("serve-app", help="(internal) run module:factory(upstream)")
    app.add_argument("--factory", required=True)
    app.add_argument("--upstream", required=True)
    app.add_argument("--port", type=int, required=True)

    up = sub.add_parser("serve-upstream", help="(internal) run the uvicorn upstream")
    up.add_argument("--port", type=int, required=True)
    up.add_argument("--max-size", type=int, default=1 << 20)

    parser.add_argument("--sizes", default="2048,204800", help="body sizes in bytes")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds over all targets; medians are reported"
    )
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--proxy-cpu", default="0", help="core for the forwarder under test")
    parser.add_argument("--load-cpu", default="1", help="core for wrk and the upstream")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run every process started at this nice level (negative needs root): on a "
        "shared machine, keeps other work from preempting the measurement",
    )
    parser.add_argument(
        "--upstream-kind",
        choices=("nginx", "uvicorn"),
        default="nginx" if shutil.which("nginx") else "uvicorn",
    )
    parser.add_argument(
        "--upstream-socket",
        action="store_true",
        help="forwarders reach the upstream over a UNIX socket (slurmrestd can listen on one)",
    )
    parser.add_argument("--path", default="/bench/{size}", help="request path; {size} is replaced")
    parser.add_argument("--header", action="append", default=[], help="extra header for wrk")
    parser.add_argument(
        "--targets",
        default="",
        help="comma list of direct,nginx," + ",".join(BUILTIN_FORWARDERS) + " (default: all)",
    )
    parser.add_argument("--target-cmd", action="append", default=[], metavar="NAME=CMD")
    parser.add_argument("--target-app", action="append", default=[], metavar="NAME=MOD:FACTORY")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)

    if args.cmd == "serve-forwarder":
        kind, _, untuned = args.kind.partition("-")
        upstream = args.upstream
        if not untuned:
            from cacheproxy.upstream.malloc import tune_malloc

            tune_malloc()
        run_uvicorn(forwarder_app(lambda: make_transport(kind, upstream)), args.port)
        return 0
    if args.cmd == "serve-app":
        module, _, attr = args.factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        run_uvicorn(factory(args.upstream), args.port)
        return 0
    if args.cmd == "serve-upstream":
        run_uvicorn(upstream_app(args.max_size), args.port)
        return 0

    global NICE
    NICE = args.nice
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            print(f"{tool} is required (apt-get install -y wrk util-linux)", file=sys.stderr)
            return 2
    print(f"# {machine()}")
    print(
        f"# upstream={args.upstream_kind} on cpu {args.load_cpu} with wrk -t{args.threads} "
        f"-c{args.connections} -d{args.duration}s; forwarder on cpu {args.proxy_cpu}; "
        f"nice {args.nice}; {args.repeat} round(s); "
        f"upstream over {'a UNIX socket' if args.upstream_socket else 'TCP'}",
        flush=True,
    )
    load_before = loadavg()
    results = run(args)
    load_after = loadavg()
    print()
    print(f"# load average (1/5/15 min): before {load_before}, after {load_after}")
    print(markdown(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "loadavg": [load_before, load_after],
                    "argv": sys.argv[1:],
                    "results": [asdict(r) for r in results],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
