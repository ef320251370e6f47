"""Application log lines are JSON in the access log's format, and carry the
id of the request they were written for."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx

from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.ops.logfmt import JsonFormatter, request_id
from cacheproxy.settings import Settings
from tests.ops.conftest import JOBS, AppFactory, auth


async def test_a_line_written_for_a_request_carries_its_id(
    make_app: AppFactory, settings: Settings, transport: Any
) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cacheproxy")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        app: CacheProxyApp = await make_app(settings)
        transport.down = True  # the upstream error is logged while answering
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=hardening.wrap(app)), base_url="http://proxy.test"
        ) as c:
            r = await c.get(JOBS, headers={**auth("alice"), "X-Request-ID": "req-19-abc"})
        logger.info("between requests")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        transport.down = False
    assert r.status_code == 502
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    during = [x for x in lines if x.get("request_id") == "req-19-abc"]
    assert during, lines
    assert all(x["level"] == "warning" and x["ts"].endswith("+00:00") for x in during)
    assert {"ts", "level", "logger", "message", "request_id"} <= set(during[0])
    after = [x for x in lines if x["message"] == "between requests"]
    assert after == [
        {
            "ts": after[0]["ts"],
            "level": "info",
            "logger": "cacheproxy",
            "message": "between requests",
        }
    ]
    assert request_id.get() is None
