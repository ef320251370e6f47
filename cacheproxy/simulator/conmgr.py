"""slurmrestd's connection manager: how many connections it holds, how many
requests it works on at once.

Both facts come from SchedMD/slurm (``src/slurmrestd/slurmrestd.c`` and
``src/common/conmgr.c``, ``src/conmgr/`` from 24.11):

* **Connections.** With ``max_connections`` connections open (124 unless
  ``--max-connections``/``SLURMRESTD_MAX_CONNECTIONS`` says otherwise, 23.02 on;
  124 compiled in as ``MAX_OPEN_CONNECTIONS`` in 22.05), conmgr stops calling
  ``accept()`` ("deferring accepting new connections until count is below
  max") and resumes when one closes.  Nothing is refused: a new client's
  handshake completes in the kernel's backlog (``listen(fd, 4096)``) and its
  request waits there, unanswered, until a slot frees.  An idle keep-alive
  connection holds its slot.
* **Workers.** ``-t`` threads (:meth:`Release.default_threads
  <cacheproxy.simulator.releases.Release.default_threads>`) run the
  requests; a request beyond them waits for a thread.

The :class:`Conmgr` keeps both counts; ``server.py`` drives the accept loop
with it and :class:`~cacheproxy.simulator.app.Simulator` takes a worker for
each request.  ``/_sim/stats`` reports them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Conmgr:
    max_connections: int
    threads: int
    #: Connections open now, and the most ever open at once.
    open: int = 0
    peak: int = 0
    #: Times accept() waited because ``max_connections`` were open.
    deferred: int = 0
    #: Requests on a worker now, the most ever at once, and how many waited.
    busy: int = 0
    peak_busy: int = 0
    queued_for_worker: int = 0
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)
    _workers: asyncio.Semaphore | None = field(default=None, repr=False)

    # -------------------------------------------------------------- connections
    async def slot(self) -> None:
        """Wait until fewer than ``max_connections`` are open, then count one more."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        if self._slots.locked():
            self.deferred += 1
        await self._slots.acquire()
        self.open += 1
        self.peak = max(self.peak, self.open)

    def closed(self) -> None:
        """A connection closed: its slot lets accept() run again."""
        self.open -= 1
        if self._slots is not None:
            self._slots.release()

    # ------------------------------------------------------------------ workers
    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        """Hold one of the ``threads`` workers (``async with conmgr.worker():``)."""
        if self._workers is None:
            self._workers = asyncio.Semaphore(self.threads)
        if self._workers.locked():
            self.queued_for_worker += 1
        async with self._workers:
            self.busy += 1
            self.peak_busy = max(self.peak_busy, self.busy)
            try:
                yield
            finally:
                self.busy -= 1

    def snapshot(self) -> dict[str, int]:
        return {
            "max_connections": self.max_connections,
            "threads": self.threads,
            "open_connections": self.open,
            "peak_connections": self.peak,
            "accept_deferred": self.deferred,
            "peak_busy_workers": self.peak_busy,
            "queued_for_worker": self.queued_for_worker,
        }


def counted(
    factory: Callable[..., asyncio.Protocol], conmgr: Conmgr
) -> Callable[..., asyncio.Protocol]:
    """A factory of ``factory``'s connections that free their slot on close."""

    def build(**kwargs: Any) -> asyncio.Protocol:
        return _Counted(factory(**kwargs), conmgr)

    return build


class _Counted(asyncio.Protocol):
    """One connection of another protocol, handing its slot back when it ends.

    A wrapper rather than a subclass: the protocol is whatever factory
    uvicorn's ``http=`` setting holds (the proxy's server protocol is a
    ``functools.partial``)."""

    def __init__(self, inner: asyncio.Protocol, conmgr: Conmgr) -> None:
        self.inner = inner
        self.conmgr = conmgr

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            self.conmgr.closed()


async def accept_loop(
    sock: socket.socket, conmgr: Conmgr, factory: Callable[[], asyncio.Protocol]
) -> None:
    """Accept a connection only while a slot is free, as conmgr does; forever."""
    loop = asyncio.get_running_loop()
    while True:
        await conmgr.slot()
        try:
            conn, _ = await loop.sock_accept(sock)
        except asyncio.CancelledError:
            conmgr.closed()
            raise
        except OSError as exc:  # EMFILE and the like: slurmrestd logs and goes on
            conmgr.closed()
            log.warning("accept() failed: %s", exc)
            await asyncio.sleep(0.1)
            continue
        try:
            conn.setblocking(False)
            await loop.connect_accepted_socket(factory, conn)
        except OSError as exc:
            conmgr.closed()
            conn.close()
            log.warning("connection lost before it was served: %s", exc)
