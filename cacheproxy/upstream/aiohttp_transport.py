"""The :class:`~cacheproxy.upstream.base.Transport` to slurmrestd, over
aiohttp's client.

Why aiohttp and not a client of our own: forwarding is bounded by slurmrestd
(a few hundred requests a second, 16 in flight), so aiohttp's CPU per
forward costs users nothing, while an own HTTP client is a permanent
security and maintenance burden (the hand-written HTTP/1.1 client that was
here before was removed for that reason; issue 16).  aiohttp is also the
cheapest mature asyncio client (several times less CPU per request than
httpx).

It is configured to be a *transparent* hop rather than a browser-like client:

* the request-target goes out byte for byte (``URL(..., encoded=True)``):
  slurmrestd's query parameters must not be re-quoted;
* headers go out exactly as given: no automatic ``User-Agent``, ``Accept``,
  ``Accept-Encoding`` or ``Content-Type``, no cookie jar, no redirects;
* bodies are neither compressed nor decompressed, and stream both ways;
* aiohttp's own silent retry of idempotent methods (which includes PUT and
  DELETE, i.e. slurmrestd writes) never happens: a client middleware (public
  API) turns the failures it would retry into an exception of ours, and the
  transport retries only what :func:`~cacheproxy.upstream.retry.may_retry`
  allows.  aiohttp does not say whether a connection was reused, so the one
  retry also covers a fresh connection dropped before the answer (harmless:
  reads only).

aiohttp writes the request line and headers as UTF-8 text, so a target or
header value that is not valid UTF-8 cannot pass byte for byte: such a
request is refused (:class:`~cacheproxy.upstream.base.UpstreamRefused`,
nothing sent) rather than sent with other bytes than the proxy decided on.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from cacheproxy.upstream.base import (
    Headers,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamRequest,
    UpstreamTimeout,
)
from cacheproxy.upstream.retry import may_retry
from cacheproxy.upstream.urls import UpstreamAddress, parse_upstream_url

_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
"""Headers aiohttp would invent; the proxy decides every header itself."""

_STALE = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientConnectionResetError,
    aiohttp.ClientOSError,
)
"""What a pooled connection that the server already closed looks like: EOF or
reset before any response byte (connect errors are caught before these)."""
_CONNECT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class _Dropped(Exception):
    """The connection broke before the response head: what aiohttp would
    retry by itself (see :func:`_no_silent_retry`); ``cause`` is its error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _no_silent_retry(
    req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """A client middleware: aiohttp retries a PUT or DELETE on a dropped
    keep-alive connection by itself, and a slurmrestd write applied twice
    submits two jobs.  Its retry catches only its own errors, so the ones it
    would retry leave here as :class:`_Dropped`; :meth:`AiohttpTransport.send`
    decides (reads only, once)."""
    try:
        return await handler(req)
    except _CONNECT:
        raise
    except _STALE as exc:
        raise _Dropped(exc) from exc


def map_error(exc: BaseException) -> UpstreamError:
    """Translate an aiohttp/OS failure into the transport exception tree.

    The order matters: aiohttp's timeouts are ``OSError`` subclasses and its
    connect errors are ``ClientOSError`` subclasses.
    """
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # Raised while waiting for a pool slot or connecting: nothing was sent.
        return UpstreamTimeout(f"connect to upstream timed out: {exc}", sent=False)
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"upstream read timed out: {exc}", sent=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(f"cannot connect to upstream: {exc}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamProtocolError(f"upstream closed the connection: {exc.message}")
    return UpstreamProtocolError(f"upstream exchange failed: {type(exc).__name__}: {exc}")


_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")
"""Characters that would end or split the request line (aiohttp writes it
unchecked: a CR/LF here would smuggle a second request to slurmrestd)."""


def wire_text(target: str) -> str:
    """The target as aiohttp must be given it to write the original bytes.

    The proxy holds targets as Latin-1 text (one char per byte); aiohttp
    encodes the request line as UTF-8, so non-ASCII targets are re-decoded as
    UTF-8 (which round-trips any valid UTF-8 byte sequence).  Other bytes
    above 0x7F cannot be sent byte-exact: :class:`UpstreamRefused`.
    """
    if _UNSAFE_TARGET.search(target):
        raise ValueError(f"unsafe character in request target {target!r}")
    if target.isascii():
        return target
    try:
        return target.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise UpstreamRefused("request target is not valid UTF-8") from None


def header_text(headers: Headers) -> list[tuple[str, str]]:
    """Header pairs as the text aiohttp encodes back to the same bytes (UTF-8;
    see :func:`wire_text`).  aiohttp itself refuses CR and LF in them."""
    try:
        return [(k.decode("utf-8"), v.decode("utf-8")) for k, v in headers]
    except UnicodeDecodeError:
        raise UpstreamRefused("a request header is not valid UTF-8") from None


class AiohttpResponse:
    """The response head, with the body left on the socket until asked for."""

    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.headers: Headers = [(k.lower(), v) for k, v in resp.raw_headers]

    async def aiter_body(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise map_error(exc) from exc

    def body_if_complete(self) -> bytes | None:
        content = self._resp.content
        if not content.is_eof():
            return None  # more to come: read it with aiter_body
        try:
            return content.read_nowait()
        except (aiohttp.ClientError, OSError) as exc:
            raise map_error(exc) from exc

    async def aclose(self) -> None:
        # aiohttp puts the connection back in the pool only if the body was
        # read to the end and the server did not say ``Connection: close``;
        # otherwise it closes it.  Either way this never blocks.
        self._resp.release()


class AiohttpTransport:
    """Pooled keep-alive connections to one slurmrestd, over aiohttp."""

    def __init__(
        self,
        address: UpstreamAddress,
        *,
        max_connections: int = 64,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        ca_file: str = "",
    ) -> None:
        self._address = address
        self._ssl: ssl.SSLContext | bool = False
        if address.tls:
            # Verified always (tokens go over it): the system's CAs or ca_file's.
            self._ssl = ssl.create_default_context(cafile=ca_file or None)
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,  # pool wait + connect
            sock_connect=connect_timeout,
            sock_read=read_timeout,  # between two reads, not for the whole body
        )
        if address.path is not None:
            self._base = "http://localhost"
        else:
            scheme = "https" if address.tls else "http"
            self._base = str(URL.build(scheme=scheme, host=address.host, port=address.port))
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        """Create the session on first use: it must belong to the running loop,
        and the transport may be built before the loop starts."""
        connector: aiohttp.BaseConnector
        if self._address.path is not None:
            connector = aiohttp.UnixConnector(
                path=self._address.path, limit=self._max_connections, limit_per_host=0
            )
        else:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300, ssl=self._ssl
            )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
            trust_env=False,
            middlewares=(_no_silent_retry,),
        )
        self._session = session
        return session

    async def send(self, request: UpstreamRequest) -> AiohttpResponse:
        session = self._session or self._open()
        url = URL(self._base + wire_text(request.target), encoded=True)
        headers = header_text(request.headers)
        body = request.body
        data: Any = body if body else None
        retry = may_retry(request)
        while True:
            try:
                resp = await session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    compress=None,
                )
            except _Dropped as dropped:
                if retry:
                    retry = False
                    continue
                raise map_error(dropped.cause) from dropped.cause
            except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
                raise map_error(exc) from exc
            return AiohttpResponse(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def create_aiohttp_transport(
    url: str,
    *,
    max_connections: int = 64,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    ca_file: str = "",
) -> AiohttpTransport:
    """An :class:`AiohttpTransport` to ``http://host:port``, ``https://host:port``
    (verified against ``ca_file``, else the system's CAs) or ``unix:/path``."""
    return AiohttpTransport(
        parse_upstream_url(url),
        max_connections=max_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        ca_file=ca_file,
    )
