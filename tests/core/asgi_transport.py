"""A Transport that calls an ASGI app in-process (like httpx's ASGITransport):
deterministic, fast tests of the proxy's logic without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

from cacheproxy.upstream.base import (
    BufferedResponse,
    Headers,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamResponse,
)


class ASGITransport:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent: list[UpstreamRequest] = []
        self.down = False

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.down:
            raise UpstreamConnectError("connection refused")
        self.sent.append(request)
        if isinstance(request.body, bytes):
            body = request.body
        else:
            body = b"".join([c async for c in request.body])
        path, _, query = request.target.partition("?")
        scope = {
            "type": "http",
            "method": request.method,
            "path": unquote(path),
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": list(request.headers),
            "client": ("127.0.0.1", 1),
        }
        done = False

        async def receive() -> dict[str, Any]:
            nonlocal done
            if done:
                await asyncio.Event().wait()
            done = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 0
        headers: Headers = []
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k.lower(), v) for k, v in message.get("headers", [])]
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return BufferedResponse(status=status, headers=headers, chunks=chunks)

    async def aclose(self) -> None:
        return None


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in stream])
