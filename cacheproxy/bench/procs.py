"""Starting and stopping the processes under test.

The simulator, the proxy (and nginx) run as separate processes, never in
the generator's process: on a 2-core machine an in-process target would
share the generator's event loop and each would slow the other invisibly.
Their output goes to log files in the results directory, which also keeps a
chatty child from blocking on a full pipe.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cacheproxy

LISTENING = re.compile(r"listening on (http://\S+)")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class StartError(RuntimeError):
    """A child process did not become ready; the message quotes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass(slots=True)
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    argv: list[str] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None
    """Run once the process is gone (e.g. remove a temp dir)."""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float | None:
        """CPU time of the process and its descendants (Linux /proc), else None."""
        return tree_cpu_seconds(self.proc.pid)

    def stop(self, timeout: float = 5.0) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=timeout)
        finally:
            if self.cleanup is not None:
                cleanup, self.cleanup = self.cleanup, None
                cleanup()


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime+stime seconds) of one process from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces.
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_cpu_seconds(root: int) -> float | None:
    if not Path("/proc").is_dir():
        return None
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
    if root not in stats:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: it imports the very cacheproxy this process runs.

    ``python -m cacheproxy`` in a child must not depend on the working directory
    or on an editable install's path hook, so the package's parent directory
    goes first on PYTHONPATH.
    """
    root = str(Path(cacheproxy.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    # faulthandler: a child that crashes in C code leaves a Python traceback in its log.
    env = {**os.environ, **(extra or {}), "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    return env


def spawn(
    name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(env),
        )


async def wait_for_line(
    proc: subprocess.Popen[bytes], log_path: Path, name: str, within: float
) -> str:
    """Wait until the log shows ``listening on URL``; return the URL."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        m = _listening(log_path)
        if m:
            return m.group(1).rstrip("/")
        if proc.poll() is not None:
            raise StartError(f"{name} exited with {proc.returncode}:\n{_tail(log_path)}")
        await asyncio.sleep(0.05)
    raise StartError(
        f"{name} did not print 'listening on' within {within:.0f} s:\n{_tail(log_path)}"
    )


def _listening(log_path: Path) -> re.Match[str] | None:
    try:
        return LISTENING.search(log_path.read_text(errors="replace"))
    except OSError:
        return None


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


async def wait_for_http(
    proc: subprocess.Popen[bytes],
    url: str,
    log_path: Path,
    name: str,
    within: float,
    ok: frozenset[int] | None = frozenset({200}),
) -> None:
    """Wait until ``url`` answers with a status in ``ok`` (None: any answer)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"{name} exited with {proc.returncode}:\n{_tail(log_path)}")
        status = await asyncio.to_thread(_get_status, url)
        if (status != 0 and ok is None) or (ok is not None and status in ok):
            return
        await asyncio.sleep(0.1)
    raise StartError(f"{name} did not answer {url} within {within:.0f} s:\n{_tail(log_path)}")


async def start_simulator(
    log_dir: Path,
    *,
    users_file: Path | None,
    jobs: int,
    nodes: int,
    seed: int,
    extra: Sequence[str] = (),
    within: float = 60.0,
) -> Service:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "cacheproxy",
        "simulate",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--jobs",
        str(jobs),
        "--nodes",
        str(nodes),
        "--seed",
        str(seed),
    ]
    if users_file is not None:
        argv += ["--users-file", str(users_file)]
    argv += list(extra)
    log_path = log_dir / "simulator.log"
    proc = spawn("simulator", argv, log_path)
    try:
        url = await wait_for_line(proc, log_path, "simulator", within)
    except BaseException:
        _kill(proc)
        raise
    return Service("simulator", proc, url, log_path, argv)


async def start_proxy(
    log_dir: Path, upstream: str, *, extra: Sequence[str] = (), within: float = 30.0
) -> Service:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "cacheproxy",
        "serve",
        "--upstream",
        upstream,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    log_path = log_dir / "proxy.log"
    url = f"http://127.0.0.1:{port}"
    proc = spawn("proxy", argv, log_path)
    try:
        await wait_for_http(proc, url + "/_cacheproxy/health", log_path, "proxy", within)
    except BaseException:
        _kill(proc)
        raise
    return Service("proxy", proc, url, log_path, argv)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)
