"""A fast fake slurmrestd for benchmarks: every GET answers a fixed JSON body
of the requested size (slurmrestd's shape: errors/warnings/meta), every
credential is accepted.  Also the "bare ASGI app" baseline of the hit-path
benchmark: the same body served with no proxy logic at all.

    python benchmarks/fixed_upstream.py --port P --size 2048
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import uvicorn


def make_body(size: int) -> bytes:
    doc: dict[str, Any] = {"jobs": [], "errors": [], "warnings": [], "meta": {"padding": ""}}
    base = len(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    doc["meta"]["padding"] = "x" * max(0, size - base)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def make_app(size: int) -> Any:
    body = make_body(size)
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start = {"type": "http.response.start", "status": 200, "headers": head}
    msg = {"type": "http.response.body", "body": body}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(start)
        await send(msg)

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--size", type=int, default=2048)
    a = p.parse_args()
    uvicorn.run(
        make_app(a.size),
        host="127.0.0.1",
        port=a.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
