"""How much CPU the generator's HTTP client costs per request: httpx vs aiohttp.

``python -m cacheproxy.bench.clientcost [N]`` starts a trivial HTTP server in
another process (so its CPU is not counted), sends N keep-alive GETs with
each client at concurrency 32 and prints the client process's CPU time per
request.  It is why ``httpclient.py`` uses aiohttp: the generator must stay
far from saturation on a 2-core machine that also runs the proxy and the
simulator.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from cacheproxy.bench import procs

_SERVER = """
import sys
from aiohttp import web
body = b'{"jobs": []}' + b' ' * 2000
async def h(request):
    return web.Response(body=body, content_type='application/json')
app = web.Application()
app.router.add_get('/x', h)
web.run_app(
    app, host='127.0.0.1', port=int(sys.argv[1]), access_log=None,
    print=lambda *a: print('listening on', flush=True),
)
"""


async def _measure(name: str, send: Callable[[], Awaitable[None]], n: int, conc: int) -> float:
    sem = asyncio.Semaphore(conc)

    async def one() -> None:
        async with sem:
            await send()

    for _ in range(50):
        await send()  # warm up: connections, imports
    cpu0 = time.process_time()
    await asyncio.gather(*(one() for _ in range(n)))
    per = (time.process_time() - cpu0) / n
    print(f"{name:8s} {per * 1e6:8.0f} us CPU per request")
    return per


def _start_server(port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port)], stdout=subprocess.PIPE, text=True
    )


async def compare(n: int = 5000, conc: int = 32) -> dict[str, float]:
    import aiohttp
    import httpx

    port = procs.free_port()
    server = _start_server(port)
    try:
        assert server.stdout is not None
        await asyncio.to_thread(server.stdout.readline)
        url = f"http://127.0.0.1:{port}/x"
        out = {}
        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with httpx.AsyncClient(limits=limits) as hx:

            async def hx_get() -> None:
                r = await hx.get(url)
                r.raise_for_status()

            out["httpx"] = await _measure("httpx", hx_get, n, conc)
        conn = aiohttp.TCPConnector(limit=conc)
        async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as ah:

            async def ah_get() -> None:
                async with ah.get(url) as r:
                    await r.read()
                    r.raise_for_status()

            out["aiohttp"] = await _measure("aiohttp", ah_get, n, conc)
        return out
    finally:
        server.terminate()
        server.wait(timeout=5)


if __name__ == "__main__":
    asyncio.run(compare(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
