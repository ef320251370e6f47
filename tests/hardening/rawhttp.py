"""Raw HTTP/1.1 over a socket: for requests no client library would send."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import orjson


@dataclass
class Raw:
    data: bytes
    """Everything the server sent."""
    closed: bool
    """The server closed the connection."""
    seconds: float

    @property
    def responses(self) -> list[tuple[int, dict[bytes, bytes], bytes]]:
        """Status, headers and body of each complete response in ``data``."""
        out = []
        rest = self.data
        while rest.startswith(b"HTTP/"):
            head, sep, rest = rest.partition(b"\r\n\r\n")
            if not sep:
                break
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ")[1])
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                headers[k.strip().lower()] = v.strip()
            n = int(headers.get(b"content-length", b"0"))
            out.append((status, headers, rest[:n]))
            rest = rest[n:]
        return out

    @property
    def status(self) -> int:
        return self.responses[0][0]

    def error(self) -> str:
        """``errors[0].error`` of the first response (slurmrestd's shape)."""
        return str(orjson.loads(self.responses[0][2])["errors"][0]["error"])


async def exchange(
    port: int,
    data: bytes | list[tuple[bytes, float]],
    *,
    wait: float = 2.0,
    until_closed: bool = True,
) -> Raw:
    """Send ``data`` (or pieces with a pause before each), read the answer.

    Reading runs alongside writing (a server may answer and close before the
    client is done) and stops when the server closes, after ``wait`` seconds
    of silence, or as soon as one complete response is in if not
    ``until_closed``.
    """
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()
    closed = asyncio.Event()
    got_one = asyncio.Event()

    async def read() -> None:
        try:
            while chunk := await reader.read(65536):
                received.extend(chunk)
                if Raw(bytes(received), False, 0).responses:
                    got_one.set()
        except ConnectionError:
            pass
        closed.set()

    reading = asyncio.create_task(read())
    try:
        pieces = [(data, 0.0)] if isinstance(data, bytes) else data
        for piece, pause in pieces:
            if pause:
                await asyncio.sleep(pause)
            if closed.is_set():
                break
            try:
                writer.write(piece)
                await writer.drain()
            except ConnectionError:
                break
        while not closed.is_set():
            before = len(received)
            waiting = [asyncio.ensure_future(closed.wait())]
            if not until_closed:
                waiting.append(asyncio.ensure_future(got_one.wait()))
            done, pending = await asyncio.wait(waiting, timeout=wait, return_when="FIRST_COMPLETED")
            for f in pending:
                f.cancel()
            if not until_closed and got_one.is_set():
                break
            if not done and len(received) == before:
                break  # silence
    finally:
        reading.cancel()
        with contextlib.suppress(BaseException):
            await reading
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return Raw(bytes(received), closed.is_set(), time.monotonic() - start)


def request(
    method: str = "GET",
    target: str = "/slurm/v0.0.43/ping",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    user: str = "alice",
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: proxy.test"]
    lines += [f"X-SLURM-USER-NAME: {user}", f"X-SLURM-USER-TOKEN: tok-{user}"]
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
