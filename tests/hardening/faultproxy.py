"""A TCP-level fault injector between cacheproxy and its upstream.

An asyncio relay on loopback.  Requests go through byte for byte; responses
are read one at a time (head, then ``Content-Length`` bytes) so a fault can
be applied to each:

========== ===============================================================
``pass``    relay unchanged
``down``    nothing listens: connections are refused
``slow``    the head waits ``delay`` seconds, the body trickles in pieces
``reset``   head and half the body, then a TCP reset (RST)
``truncate`` head and half the body, then a clean close (FIN)
``burst``   the next ``burst`` responses are replaced by 503s (Connection:
            close, like slurmrestd's errors); then ``pass``
``close``   every response carries ``Connection: close`` and the connection
            is closed after it
``hung``    requests are read and never answered
========== ===============================================================

Changing the mode aborts every open connection, so the new mode applies to
the very next request (the proxy's pool sees dead connections, as it would
when slurmrestd restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

MODES = ("pass", "down", "slow", "reset", "truncate", "burst", "close", "hung")

_BUSY_BODY = (
    b'{"errors":[{"error":"Unable to contact slurm controller (connect failure)",'
    b'"error_number":1007,"description":"injected"}],"warnings":[],"meta":{}}'
)


@dataclass
class FaultStats:
    connections: int = 0
    responses: int = 0
    """Responses relayed unchanged."""
    faults: dict[str, int] = field(default_factory=dict)
    """mode -> responses (or connections) it damaged."""

    def hit(self, mode: str) -> None:
        self.faults[mode] = self.faults.get(mode, 0) + 1


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.delay = 0.2
        self.burst = 0
        self.port = 0
        self.stats = FaultStats()
        self.received: list[bytearray] = []
        """Per upstream connection, every byte the proxy sent (to check framing)."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def set_mode(self, mode: str, *, delay: float = 0.2, burst: int = 0) -> None:
        assert mode in MODES, mode
        self.mode, self.delay, self.burst = mode, delay, burst
        self._abort_all()
        if mode == "down" and self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()
        elif mode != "down" and self._server is None:
            await self.start()

    async def aclose(self) -> None:
        self._abort_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- internals ------------------------------------------------------------
    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        self._writers.add(client_w)
        up_w: asyncio.StreamWriter | None = None
        pump: asyncio.Task[None] | None = None
        try:
            if self.mode == "hung":
                self.stats.hit("hung")
                while await client_r.read(65536):
                    pass
                return
            up_r, up_w = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_w)
            sink = bytearray()
            self.received.append(sink)
            pump = asyncio.get_running_loop().create_task(_pump(client_r, up_w, sink))
            while True:
                head = await up_r.readuntil(b"\r\n\r\n")
                length = _content_length(head)
                body = await up_r.readexactly(length)
                if not await self._answer(client_w, head, body):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.LimitOverrunError):
            return
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
            for w in (client_w, up_w):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()

    async def _answer(self, w: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
        """Send one response as the mode says; False to end the connection."""
        mode = self.mode
        if mode == "burst" and self.burst > 0:
            self.burst -= 1
            self.stats.hit("burst")
            w.write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: Close\r\n\r\n" % len(_BUSY_BODY) + _BUSY_BODY
            )
            await w.drain()
            return False
        if mode in ("reset", "truncate") and body:
            self.stats.hit(mode)
            w.write(head + body[: len(body) // 2])
            await w.drain()
            await asyncio.sleep(0.05)  # let the bytes reach the peer before the RST
            if mode == "reset":
                _linger_zero(w)
                w.transport.abort()
            else:
                w.close()
            return False
        if mode == "slow":
            self.stats.hit("slow")
            await asyncio.sleep(self.delay)
            w.write(head)
            step = max(1, len(body) // 4)
            for i in range(0, len(body), step):
                await asyncio.sleep(self.delay / 8)
                w.write(body[i : i + step])
                await w.drain()
            return True
        if mode == "close":
            self.stats.hit("close")
            lines = [
                line
                for line in head[:-4].split(b"\r\n")
                if not line.lower().startswith(b"connection:")
            ]
            w.write(b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body)
            await w.drain()
            w.close()
            return False
        self.stats.responses += 1
        w.write(head + body)
        await w.drain()
        return not _closes(head)


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sink: bytearray
) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            sink.extend(data)
            writer.write(data)
            await writer.drain()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    status = head.split(b" ", 2)[1]
    if status in (b"204", b"304") or status.startswith(b"1"):
        return 0
    raise ConnectionError("fault proxy needs Content-Length responses")


def _closes(head: bytes) -> bool:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"connection" and b"close" in value.lower():
            return True
    return False


def _linger_zero(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
