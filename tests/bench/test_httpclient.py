"""The generator's HTTP client: unix sockets, and decoding what it checks."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest
from aiohttp import web

from cacheproxy.bench.httpclient import HttpClient, Response, decoded


async def test_unix_socket_upstream(tmp_path: Path) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"user": request.headers.get("X-SLURM-USER-NAME")})

    app = web.Application()
    app.router.add_get("/slurm/v0.0.43/ping", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = tmp_path / "slurmrestd.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        async with HttpClient(f"unix:{sock}") as http:
            resp = await http.request("GET", "/slurm/v0.0.43/ping", {"X-SLURM-USER-NAME": "u1"})
    finally:
        await runner.cleanup()
    assert resp.status == 200
    assert resp.body == b'{"user": "u1"}'


def _resp(body: bytes, encoding: str | None) -> Response:
    return Response(200, body, None, None, encoding, "")


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        (None, lambda b: b),
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
    ],
)
def test_decoded(encoding: str | None, encode: object) -> None:
    body = b'{"jobs": []}' * 50
    assert decoded(_resp(encode(body), encoding)) == body  # type: ignore[operator]


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="Content-Encoding"):
        decoded(_resp(b"x", "br"))
