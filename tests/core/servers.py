"""Serve ASGI apps on free loopback ports inside the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from cacheproxy.http import server as http_server


@asynccontextmanager
async def serve(
    app: Any, *, lifespan: str = "on", uds: str | None = None, **options: Any
) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1:<free port>, or on the UNIX
    socket ``uds``; yields its URL (``unix:<path>`` for a socket).
    ``options`` go to ``uvicorn.Config`` over these defaults.

    The protocol is the one ``cacheproxy serve`` runs
    (:mod:`cacheproxy.http.server`), so every test over a socket also tests
    it; it believes ``X-Forwarded-For`` from loopback, as uvicorn does by
    default.  ``http="httptools"`` serves plain uvicorn (and its own
    proxy-headers middleware).  Its head limits are far above the proxy's
    (a fake slurmrestd must not refuse what the proxy under test forwards);
    the proxy under test passes its own ``http``."""
    if "http" not in options:
        options["http"] = http_server.protocol(
            http_server.ServerOptions(
                forwarded_allow_ips=("127.0.0.1", "::1"),
                max_url_bytes=1 << 20,
                max_head_bytes=1 << 21,
            )
        )
    if not isinstance(options["http"], str):  # ours: it rewrites the client itself
        options.setdefault("proxy_headers", False)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        uds=uds,
        loop="none",
        lifespan=lifespan,
        log_level="warning",
        **{
            "access_log": False,
            "server_header": False,
            "date_header": False,
            **options,
        },
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        if uds is not None:
            yield f"unix:{uds}"
        else:
            port = server.servers[0].sockets[0].getsockname()[1]
            yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
