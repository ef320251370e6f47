"""Run the simulator under uvicorn: in this process, in a thread, or as a subprocess.

uvicorn is configured to add nothing of its own (no ``Server``/``Date``
headers), with uvloop and the proxy's own server protocol
(:mod:`cacheproxy.http.server`, on httptools), which writes slurmrestd's
reason phrases when asked (``exact_status_lines``).  uvicorn does not accept
connections itself: :func:`conmgr.accept_loop
<cacheproxy.simulator.conmgr.accept_loop>` does, stopping at slurmrestd's
connection limit, and hands each one to that protocol, made with the keywords
uvicorn's own ``startup()`` passes (the contract ``tests/core/test_dependencies.py``
pins; the simulator keeps no lifespan state, so ``app_state`` is empty).
"""

from __future__ import annotations

import asyncio
import http
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import uvicorn

from cacheproxy.http.server import ServerOptions, protocol
from cacheproxy.simulator.app import Simulator
from cacheproxy.simulator.config import SimConfig
from cacheproxy.simulator.conmgr import Conmgr, accept_loop, counted


def slurmrestd_reason_phrases() -> tuple[tuple[int, str], ...]:
    """slurmrestd's reason phrases (``304 NOT MODIFIED``, ``500 INTERNAL ERROR``)."""
    phrases = []
    for code in range(100, 600):
        try:
            phrase = http.HTTPStatus(code).phrase.upper()
        except ValueError:
            continue
        phrases.append((code, "INTERNAL ERROR" if code == 500 else phrase))
    return tuple(phrases)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """A uvicorn server that accepts as slurmrestd does and reports when it is ready."""

    def __init__(
        self, config: uvicorn.Config, conmgr: Conmgr, on_ready: Callable[[], None] | None
    ) -> None:
        super().__init__(config)
        self._conmgr = conmgr
        self._on_ready = on_ready
        self._accepting: list[asyncio.Task[None]] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn listens on nothing (lifespan only); the accept loops below do.
        await super().startup([])
        factory = counted(self.config.http_protocol_class, self._conmgr)

        def build() -> asyncio.Protocol:
            return factory(config=self.config, server_state=self.server_state, app_state={})

        self._accepting = [
            asyncio.create_task(accept_loop(sock, self._conmgr, build)) for sock in sockets or []
        ]
        if self._on_ready is not None and self.started:
            self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        await super().shutdown(sockets)


def make_server(
    app: Simulator, on_ready: Callable[[], None] | None = None, **overrides: Any
) -> _Server:
    reasons = slurmrestd_reason_phrases() if app.config.exact_status_lines else ()
    options: dict[str, Any] = {
        "loop": "uvloop",
        "http": protocol(ServerOptions(reason_phrases=reasons)),
        "proxy_headers": False,
        "lifespan": "on",
        "server_header": False,
        "date_header": False,
        "access_log": False,
        "log_level": "warning",
        "timeout_keep_alive": 300,
        "backlog": 2048,
    }
    options.update(overrides)
    return _Server(uvicorn.Config(app, **options), app.conmgr, on_ready)


def serve(config: SimConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve in the foreground until interrupted (the CLI)."""
    sock = bind(config.host, config.port)
    url = url_of(sock)
    server = make_server(Simulator(config), (lambda: on_ready(url)) if on_ready else None)
    server.run(sockets=[sock])


@contextmanager
def running_simulator(**config: Any) -> Iterator[str]:
    """Run a simulator in a background thread; yields its base URL.

    Keyword arguments are :class:`SimConfig` fields (``cost_model="none"``,
    ``jobs=50``, ``private_data=True``, ...); the port defaults to a free one.
    Tests that need the :class:`Simulator` itself (to read its state or move
    its clock with ``advance``) build it and use :func:`running_app`.
    """
    cfg = replace(SimConfig(), **config)
    with running_app(Simulator(cfg)) as url:
        yield url


@contextmanager
def running_app(app: Simulator) -> Iterator[str]:
    """Serve an existing :class:`Simulator` in a background thread."""
    sock = bind(app.config.host, app.config.port)
    url = url_of(sock)
    ready = threading.Event()
    server = make_server(app, ready.set)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("simulator did not start within 30 s")
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextmanager
def running_simulator_process(*args: str, timeout: float = 60.0) -> Iterator[str]:
    """Run ``python -m cacheproxy.simulator --port 0 ARGS`` as a subprocess.

    Yields the base URL it prints; the process is ended (by its pid) on exit.
    The subprocess writes slurmrestd's reason phrases, so raw-socket tests see
    ``HTTP/1.1 304 NOT MODIFIED`` exactly.  Its stderr goes to a temporary
    file (a pipe nobody reads could fill up and stall a long benchmark).
    """
    argv = [sys.executable, "-m", "cacheproxy.simulator", "--port", "0", *args]
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            assert proc.stdout is not None
            url = ""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                if line.startswith("listening on "):
                    url = line.split("listening on ", 1)[1].strip()
                    break
            if not url:
                proc.kill()
                proc.wait(10)
                errors.seek(0)
                raise RuntimeError(f"simulator did not start: {errors.read()[-2000:]}")
            yield url
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
