"""Logs: the JSON access log, X-Request-ID, and no secret in any line.

Every test in this folder already fails if a registered secret reaches a log
line (see conftest.py); this one drives every path that logs (access log,
upstream errors, refusals, the safety net) with secrets in every place a
client can put them: token headers, Bearer, cookies, the query, the path and
the body.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson

from cacheproxy.http.accesslog import AccessLog, RequestContext, redact, redact_query
from cacheproxy.http.pipeline import AsgiHandler, Pipeline
from cacheproxy.stats import Stats
from tests.hardening.conftest import JOBS, Stack, V, auth, check, secret

JWT = secret(
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdW4iOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0."
    "c2VjcmV0LXNpZ25hdHVyZS1ub3QtcmVhbA"
)


def access_lines(lines: list[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        if " cacheproxy.access: " in line:
            out.append(orjson.loads(line.split(" cacheproxy.access: ", 1)[1]))
    return out


async def test_no_secret_in_any_log_line(stack: Stack, logs: Any) -> None:
    cookie = secret("session-cookie-value-7f3a")
    body = secret("BODY-SECRET-9c1e")
    query_token = secret("query-token-4b2d")
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as c:
        check(
            await c.post(
                f"{V}/job/submit", headers=auth("alice"), content=b'{"script":"' + body.encode()
            )
        )
        check(await c.get(JOBS, headers={**auth("alice"), "Cookie": f"sid={cookie}"}))
        check(await c.get(JOBS, headers={"Authorization": f"Bearer {JWT}"}))
        check(await c.get(f"{JOBS}?token={query_token}&flags=DETAIL", headers=auth("alice")))
        check(await c.get(f"{V}/job/{JWT}", headers=auth("alice")))
        check(await c.get(JOBS, headers=auth("alice", secret("tok-wrong-5e8f"))))
        await stack.faults.set_mode("down")
        stack.clock.advance(10)
        for _ in range(4):
            check(await c.get(f"{V}/partitions", headers=auth("bob")))
        check(await c.get(JOBS, headers=auth("alice")))
        await stack.faults.set_mode("pass")
    text = "\n".join(logs.lines)
    for s in (cookie, body, query_token, JWT, "tok-alice", "tok-bob", "tok-wrong-5e8f"):
        assert s not in text, s
    lines = access_lines(logs.lines)
    assert len(lines) >= 10
    assert not [line for line in logs.lines if line.split(" ", 2)[1] == "uvicorn.access:"]
    for line in lines:
        assert set(line) == {
            "ts", "request_id", "client", "method", "path", "query", "status", "bytes",
            "duration_ms", "cache", "rule", "user",
        }  # fmt: skip
        assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])
    by_query = [line for line in lines if "flags=DETAIL" in line["query"]]
    assert by_query[0]["query"] == "token=[redacted]&flags=DETAIL"
    assert any(line["path"] == f"{V}/job/[redacted]" for line in lines)
    assert any("stale-if-error" in line["cache"] for line in lines)


async def test_request_id_kept_passed_upstream_and_returned(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as c:
        r = check(
            await c.get(f"{V}/ping", headers={**auth("alice"), "X-Request-ID": "abc-123.X_y"})
        )
        assert r.headers.get_list("x-request-id") == ["abc-123.X_y"]
        upstream = b"".join(bytes(b) for b in stack.faults.received)
        assert b"x-request-id: abc-123.X_y\r\n" in upstream
        for bad in (b"a" * 129, b"has space", b"semi;colon", "é".encode(), b""):
            r = check(await c.get(f"{V}/ping", headers={**auth("alice"), "X-Request-ID": bad}))
            new = r.headers.get_list("x-request-id")
            assert len(new) == 1
            assert re.fullmatch(r"[0-9a-f]{32}", new[0]), bad
        twice = [("X-Request-ID", "one"), ("X-Request-ID", "two"), *auth("alice").items()]
        r = check(await c.get(f"{V}/ping", headers=twice))
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
        hit = check(await c.get(JOBS, headers={**auth("alice"), "X-Request-ID": "first"}))
        hit = check(await c.get(JOBS, headers={**auth("alice"), "X-Request-ID": "second"}))
        assert hit.headers["cache-status"].startswith("cacheproxy; hit")
        assert hit.headers.get_list("x-request-id") == ["second"]


async def test_safety_net_answers_503_and_logs_no_message(logs: Any) -> None:
    leaked = secret("tok-in-an-exception-message")

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError(leaked)

    stats = Stats()
    app = Pipeline([AccessLog(stats, True), RequestContext()], AsgiHandler(broken), stats)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
    ) as c:
        r = await c.get(JOBS, headers=auth("alice"))
    assert r.status_code == 503
    assert r.json()["errors"][0]["source"] == "cacheproxy"
    assert r.headers["cache-status"] == "cacheproxy; detail=internal-error"
    assert stats.internal_errors == 1
    assert any("internal error" in line and "KeyError" in line for line in logs.lines)


def test_redaction() -> None:
    assert redact_query(b"a=1&token=x&jwt=y&password=z&b=2") == (
        "a=1&token=[redacted]&jwt=[redacted]&password=[redacted]&b=2"
    )
    assert redact(f"/x/{JWT}/y") == "/x/[redacted]/y"
    assert redact_query(f"q={JWT}".encode()) == "q=[redacted]"
