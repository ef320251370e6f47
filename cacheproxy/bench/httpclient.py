"""The load generator's HTTP client.

aiohttp, not httpx: on this project's 2-core test machine, against a trivial
local server at concurrency 32, httpx cost 2.2 ms of CPU per request and
aiohttp 0.13 ms (``python -m cacheproxy.bench.clientcost`` measures it again),
and the generator shares the machine with the proxy and the simulator.
Bodies are read raw (no decompression, nothing parsed here): callers decode
only what they check (:func:`decoded`).
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from types import TracebackType

import aiohttp

USER_AGENT = "cacheproxy-bench/1"
DEFAULT_ACCEPT_ENCODING = "gzip, deflate"
"""What python-requests sends, as most REST clients of slurmrestd do.  slurmrestd
itself never compresses; a proxy that does saves its clients the bytes."""


@dataclass(slots=True)
class Response:
    status: int
    """HTTP status, or 0 when no response came back."""
    body: bytes
    cache_status: str | None
    x_cache_status: str | None
    content_encoding: str | None
    error: str
    """Empty, or why no response came back (timeout, connect, disconnect...)."""


class HttpClient:
    """A keep-alive connection pool to one base URL."""

    def __init__(
        self,
        base_url: str,
        *,
        connections: int = 256,
        timeout: float = 30.0,
        accept_encoding: str = DEFAULT_ACCEPT_ENCODING,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._socket: str | None = None
        if base_url.startswith("unix:"):
            # slurmrestd on a unix socket (rest_auth/local): same requests, no TCP.
            self._socket = base_url.removeprefix("unix:")
            self.base_url = "http://localhost"
        self.accept_encoding = accept_encoding
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10.0))
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        connector: aiohttp.BaseConnector
        if self._socket is not None:
            connector = aiohttp.UnixConnector(self._socket, limit=self._connections)
        else:
            connector = aiohttp.TCPConnector(
                limit=self._connections,
                limit_per_host=0,
                ttl_dns_cache=None,
                enable_cleanup_closed=True,
            )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Accept-Encoding": self.accept_encoding,
            },
            skip_auto_headers=("Accept-Encoding",),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None = None,
    ) -> Response:
        session = self._session
        assert session is not None, "use HttpClient as an async context manager"
        if body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        try:
            async with session.request(
                method, self.base_url + path, headers=headers, data=body, allow_redirects=False
            ) as resp:
                data = await resp.read()
                return Response(
                    resp.status,
                    data,
                    resp.headers.get("Cache-Status"),
                    resp.headers.get("X-Cache-Status"),
                    resp.headers.get("Content-Encoding"),
                    "",
                )
        except TimeoutError:
            return Response(0, b"", None, None, None, "timeout")
        except aiohttp.ServerDisconnectedError:
            return Response(0, b"", None, None, None, "disconnected")
        except aiohttp.ClientConnectorError:
            return Response(0, b"", None, None, None, "connect")
        except aiohttp.ClientPayloadError:
            return Response(0, b"", None, None, None, "truncated")
        except aiohttp.ClientError as exc:
            return Response(0, b"", None, None, None, type(exc).__name__)
        except asyncio.CancelledError:
            raise

    async def get_json_bytes(self, path: str, within: float = 5.0) -> bytes | None:
        """A side-channel GET (stats endpoints): the body, or None on any failure."""
        session = self._session
        assert session is not None
        try:
            async with session.get(
                self.base_url + path, timeout=aiohttp.ClientTimeout(total=within)
            ) as resp:
                if resp.status != 200:
                    return None
                return await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            return None

    async def post_empty(self, path: str, within: float = 5.0) -> int:
        session = self._session
        assert session is not None
        try:
            async with session.post(
                self.base_url + path, timeout=aiohttp.ClientTimeout(total=within)
            ) as resp:
                await resp.read()
                return resp.status
        except (TimeoutError, aiohttp.ClientError):
            return 0


def decoded(resp: Response) -> bytes:
    """The body without its Content-Encoding (gzip or deflate), for the few
    answers the generator reads (read-your-writes checks)."""
    enc = (resp.content_encoding or "").strip().lower()
    if enc in ("", "identity"):
        return resp.body
    if enc in ("gzip", "x-gzip"):
        return zlib.decompress(resp.body, 16 + zlib.MAX_WBITS)
    if enc == "deflate":
        try:
            return zlib.decompress(resp.body)
        except zlib.error:
            return zlib.decompress(resp.body, -zlib.MAX_WBITS)
    raise ValueError(f"unexpected Content-Encoding {enc!r}")
