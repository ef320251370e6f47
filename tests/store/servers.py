"""Real servers for the store and multi-replica tests, run as processes we own.

Debian's ``redis-server`` and ``haproxy`` are started on free loopback ports
with generated configuration, waited for (PING / TCP accept), and stopped by
pid.  A missing binary is installed with apt when running as root; otherwise
the test FAILS with the command to run: a skip would hide a missing install.

Shared by ``tests/store`` and ``tests/redis`` (``from tests.store import servers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
REPO = Path(__file__).resolve().parents[2]
SHIPPED_HAPROXY_CFG = REPO / "config" / "haproxy.cfg"
SHIPPED_NGINX_CONF = REPO / "config" / "nginx-lb.conf"
START_DEADLINE = 20.0
"""Seconds a server may take to become ready (a readiness wait, not a test)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _which(binary: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for d in _SBIN:
        candidate = Path(d) / binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_binary(binary: str, package: str) -> str:
    """Path of ``binary``; installs Debian's ``package`` when root, else fails."""
    found = _which(binary)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(
            f"{binary} is not installed and these tests need it: run "
            f"`apt-get install -y {package}` (as root) and re-run",
            pytrace=False,
        )
    proc = subprocess.run(
        ["apt-get", "install", "-y", package],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    found = _which(binary)
    if not found:
        tail = (proc.stdout + proc.stderr)[-2000:]
        pytest.fail(
            f"`apt-get install -y {package}` did not provide {binary} "
            f"(exit {proc.returncode}):\n{tail}",
            pytrace=False,
        )
    return found


def wait_tcp(port: int, proc: subprocess.Popen[bytes] | None, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{_tail(log)}", pytrace=False)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.02)
    pytest.fail(f"{what} did not listen on port {port}:\n{_tail(log)}", pytrace=False)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Stop one process we started, by its pid; SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class RedisServer:
    """``redis-server`` on 127.0.0.1, no persistence, in its own directory."""

    def __init__(self, workdir: Path, *, port: int | None = None, args: Sequence[str] = ()):
        self.binary = ensure_binary("redis-server", "redis-server")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> RedisServer:
        cmd = [
            self.binary,
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.workdir),
            "--protected-mode",
            "no",
            *self.args,
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ping()
        return self

    def _wait_ping(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(
                    f"redis-server exited with {self.proc.returncode}:\n{_tail(self.log)}",
                    pytrace=False,
                )
            if self.command("PING") == "+PONG":
                return
            time.sleep(0.02)
        pytest.fail(f"redis-server did not answer PING:\n{_tail(self.log)}", pytrace=False)

    def command(self, *args: str) -> str | None:
        """One inline command over a raw socket; the first reply line, or None."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1.0) as s:
                s.sendall(self._pack(args))
                data = b""
                while not data.endswith(b"\r\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                return data.split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError:
            return None

    @staticmethod
    def _pack(args: Sequence[str]) -> bytes:
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            raw = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        return b"".join(out)

    def stop(self) -> None:
        stop_process(self.proc)

    def kill(self) -> None:
        stop_process(self.proc, signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the server accepts TCP (kernel backlog) but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()


class SentinelServer:
    """``redis-server --sentinel`` monitoring ``master_port`` as ``mymaster``
    (quorum 1: one sentinel decides, which is all a test needs)."""

    def __init__(self, workdir: Path, master_port: int, *, port: int | None = None):
        self.binary = ensure_binary("redis-server", "redis-server")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.master_port = master_port
        self.config = workdir / "sentinel.conf"
        self.log = workdir / "sentinel.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelServer:
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master_port} 1\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 10000\n"
        )
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, str(self.config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
        wait_tcp(self.port, self.proc, "redis sentinel", self.log)
        return self

    def stop(self) -> None:
        stop_process(self.proc)


class HAProxy:
    """``haproxy -db`` with the shipped configuration in front of ``backends``."""

    def __init__(
        self,
        workdir: Path,
        backends: Sequence[int],
        *,
        port: int | None = None,
        health_path: str = "/_cacheproxy/health",
    ) -> None:
        self.binary = ensure_binary("haproxy", "haproxy")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.backends = list(backends)
        self.health_path = health_path
        self.config = workdir / "haproxy.cfg"
        self.socket = workdir / "haproxy.sock"
        self.log = workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def render(self) -> str:
        """The shipped ``config/haproxy.cfg`` with our own global section,
        loopback addresses and faster health checks."""
        out: list[str] = [
            "global",
            "    maxconn 4096",
            f"    stats socket {self.socket} mode 600 level admin",
            "",
        ]
        in_global = False
        for line in SHIPPED_HAPROXY_CFG.read_text().splitlines():
            if line and not line[0].isspace() and not line.startswith("#"):
                in_global = line.split()[0] == "global"
            if in_global:
                continue
            stripped = line.strip()
            if stripped.startswith("bind "):
                line = f"    bind 127.0.0.1:{self.port}"
            elif stripped.startswith("server "):
                continue
            elif stripped.startswith("default-server "):
                line = line.replace("inter 2s", "inter 200ms")
            out.append(line)
        out += [f"    server r{i} 127.0.0.1:{p} check" for i, p in enumerate(self.backends)]
        return "\n".join(out) + "\n"

    def start(self) -> HAProxy:
        self.config.write_text(self.render())
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self.config)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            pytest.fail(f"bad haproxy config:\n{check.stdout}{check.stderr}", pytrace=False)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_tcp(self.port, self.proc, "haproxy", self.log)
        return self

    def stats(self) -> dict[str, str]:
        """Backend server name -> status (UP, DOWN, ...) from the stats socket
        (empty while haproxy has not created the socket yet)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            try:
                s.connect(str(self.socket))
            except (FileNotFoundError, ConnectionRefusedError):
                return {}
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        out: dict[str, str] = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "cacheproxy" and row.get("svname", "").startswith("r"):
                out[row["svname"]] = row.get("status", "")
        return out

    def wait_status(self, server: str, status: str, deadline: float = START_DEADLINE) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.stats().get(server, "").startswith(status):
                return
            time.sleep(0.05)
        pytest.fail(f"haproxy never saw {server} {status}: {self.stats()}", pytrace=False)

    def stop(self) -> None:
        stop_process(self.proc)


class Nginx:
    """nginx running the shipped ``config/nginx-lb.conf`` in front of ``backends``."""

    def __init__(self, workdir: Path, backends: Sequence[int], *, port: int | None = None):
        self.binary = ensure_binary("nginx", "nginx")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.backends = list(backends)
        self.log = workdir / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def render_site(self) -> str:
        out: list[str] = []
        servers_done = False
        for line in SHIPPED_NGINX_CONF.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("listen "):
                line = f"    listen 127.0.0.1:{self.port};"
            elif stripped.startswith("server ") and stripped.endswith(";"):
                if servers_done:
                    continue
                servers_done = True
                opts = stripped.split(None, 2)[2] if len(stripped.split()) > 2 else ";"
                out += [f"    server 127.0.0.1:{p} {opts}" for p in self.backends]
                continue
            out.append(line)
        return "\n".join(out) + "\n"

    def start(self) -> Nginx:
        d = self.workdir
        (d / "cacheproxy-lb.conf").write_text(self.render_site())
        temp = " ".join(
            f"{kind}_temp_path {d / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (d / "nginx.conf").write_text(
            f"worker_processes 1;\npid {d / 'nginx.pid'};\nerror_log {self.log} warn;\n"
            "events { worker_connections 512; }\n"
            f"http {{ access_log off; {temp} include {d / 'cacheproxy-lb.conf'}; }}\n"
        )
        cmd = [self.binary, "-p", str(d), "-c", str(d / "nginx.conf")]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            pytest.fail(f"bad nginx config:\n{check.stdout}{check.stderr}", pytrace=False)
        with (d / "stdout.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT
            )
        wait_tcp(self.port, self.proc, "nginx", self.log)
        return self

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)


class FaultyLink:
    """A TCP forwarder we can break: ``pass``, ``blackhole`` (accept, never
    answer: a stalled server) or ``refuse`` (drop every connection: a dead one).

    Runs in the test's event loop, in front of a real Redis.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> FaultyLink:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "blackhole", "refuse")
        self.mode = mode
        if mode == "refuse":
            for w in list(self._writers):
                w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if self.mode == "pass":
                        dst.write(data)
                        await dst.drain()
                    # blackhole: swallow everything
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self._server.wait_closed()
