"""Request smuggling and header injection over raw sockets.

Whatever a client sends, every request that reaches slurmrestd must be one
the proxy framed itself (its own Content-Length, no Transfer-Encoding), and
no request hidden in another's body may ever reach it.  What arrives upstream
is recorded by the fault proxy (in ``pass`` mode) and parsed with h11.
"""

from __future__ import annotations

import asyncio

import h11

from tests.hardening.conftest import FIGURES, Stack, ours
from tests.hardening.rawhttp import exchange

SMUGGLED = b"GET /slurm/v0.0.43/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
AUTH = b"X-SLURM-USER-NAME: alice\r\nX-SLURM-USER-TOKEN: tok-alice\r\n"
POST = b"POST /slurm/v0.0.43/job/submit HTTP/1.1\r\nHost: proxy.test\r\n" + AUTH


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


ATTACKS: dict[str, bytes] = {
    "CL.TE": POST
    + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s"
    % (5 + len(SMUGGLED), SMUGGLED),
    "TE.CL": POST
    + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
    + chunk(SMUGGLED)
    + b"0\r\n\r\n",
    "CL.CL differing": POST
    + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED),
    "CL.CL same": POST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "CL list": POST + b"Content-Length: 2, 2\r\n\r\n{}",
    "TE xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n" + chunk(SMUGGLED) + b"0\r\n\r\n",
    "TE space before colon": POST
    + b"Transfer-Encoding : chunked\r\nContent-Length: 2\r\n\r\n{}"
    + SMUGGLED,
    "TE tab": POST
    + b"Transfer-Encoding:\tchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "TE chunked,identity": POST
    + b"Transfer-Encoding: chunked, identity\r\n\r\n"
    + chunk(SMUGGLED)
    + b"0\r\n\r\n",
    "TE twice": POST
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
    + chunk(b"{}")
    + b"0\r\n\r\n"
    + SMUGGLED,
    "TE obs-fold": POST
    + b"Transfer-Encoding: identity\r\n chunked\r\nContent-Length: 2\r\n\r\n{}"
    + SMUGGLED,
    "CL obs-fold": POST + b"Content-Length: 0\r\n %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED),
    "CL negative": POST + b"Content-Length: -1\r\n\r\n" + SMUGGLED,
    "CL plus": POST + b"Content-Length: +2\r\n\r\n{}" + SMUGGLED,
    "CL hex": POST + b"Content-Length: 0x2\r\n\r\n{}" + SMUGGLED,
    "CL huge": POST + b"Content-Length: 99999999999999999999999\r\n\r\n{}",
    "chunk size overflow": POST + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n{}",
    "chunk no CRLF": POST + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n" + SMUGGLED,
    "chunk extension": POST + b'Transfer-Encoding: chunked\r\n\r\n2;x="a\r\nb"\r\n{}\r\n0\r\n\r\n',
    "bare LF": b"POST /slurm/v0.0.43/job/submit HTTP/1.1\nHost: x\nContent-Length: 2\n"
    + AUTH.replace(b"\r\n", b"\n")
    + b"\n{}"
    + SMUGGLED,
    "bare CR in header": b"GET /slurm/v0.0.43/ping HTTP/1.1\r\nHost: x\r\n"
    + AUTH
    + b"X-Foo: a\rX-Injected: 1\r\n\r\n",
    "NUL in header": b"GET /slurm/v0.0.43/ping HTTP/1.1\r\nHost: x\r\n"
    + AUTH
    + b"X-Foo: a\x00b\r\n\r\n",
    "space in header name": b"GET /slurm/v0.0.43/ping HTTP/1.1\r\nHost: x\r\n"
    + AUTH
    + b"X Injected: 1\r\n\r\n",
    "request line junk": b"GET /slurm/v0.0.43/ping HTTP/1.1 extra\r\nHost: x\r\n" + AUTH + b"\r\n",
    "absolute-form": b"GET http://evil.example/slurm/v0.0.43/ping HTTP/1.1\r\n"
    + b"Host: evil.example\r\n"
    + AUTH
    + b"\r\n",
    "CR in target": b"GET /slurm/v0.0.43/ping\rX HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n",
    "HTTP/1.0 body no length": b"POST /slurm/v0.0.43/job/submit HTTP/1.0\r\n"
    + AUTH
    + b"\r\n{}"
    + SMUGGLED,
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "after Connection: close": b"GET /slurm/v0.0.43/ping HTTP/1.1\r\nHost: x\r\n"
    + b"Connection: close\r\n"
    + AUTH
    + b"\r\n"
    + SMUGGLED,
    "Expect 100 oversized": POST + b"Content-Length: 999999999\r\nExpect: 100-continue\r\n\r\n",
    "CONNECT": b"CONNECT slurmctld:6817 HTTP/1.1\r\nHost: slurmctld:6817\r\n" + AUTH + b"\r\n",
    "TRACE": b"TRACE /slurm/v0.0.43/ping HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n",
}


def upstream_requests(stack: Stack) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]]:
    """(method, target, headers, body) of every request slurmrestd received,
    parsed strictly; fails if any connection carried a malformed one."""
    out = []
    for raw in stack.faults.received:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(bytes(raw))
        current: list[object] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                break
            if isinstance(event, h11.Request):
                current = [event.method, event.target, list(event.headers), b""]
            elif isinstance(event, h11.Data):
                current[3] += event.data  # type: ignore[operator]
            elif isinstance(event, h11.EndOfMessage):
                out.append(tuple(current))
                # pretend we answered, to parse the next request on the connection
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
    return out  # type: ignore[return-value]


async def test_no_request_is_smuggled_upstream(stack: Stack) -> None:
    """Every attack at once, each on its own connection."""
    names = list(ATTACKS)
    raws = await asyncio.gather(*(exchange(stack.proxy.port, ATTACKS[n], wait=0.5) for n in names))
    await asyncio.sleep(0.05)
    for name, raw in zip(names, raws, strict=True):
        for status, headers, body in raw.responses:
            hdrs = {k.decode(): v.decode("latin-1") for k, v in headers.items()}
            assert not ours(status, hdrs, body), (name, status, body[:200])
    seen = upstream_requests(stack)
    for method, target, headers, body in seen:
        where = (method, target, headers, body[:100])
        assert b"smuggled" not in target, where
        header_names = [k for k, _ in headers]
        assert b"transfer-encoding" not in header_names, where
        assert b"x-injected" not in header_names, where
        assert not target.startswith(b"http"), where  # origin-form only
        length = [v for k, v in headers if k == b"content-length"]
        assert len(length) <= 1, where
        assert int(length[0] if length else b"0") == len(body), where
        for _, v in headers:
            assert b"\r" not in v, where
            assert b"\n" not in v, where
            assert b"\x00" not in v, where
        if method == b"POST":
            assert body in (b"", b"{}"), where
    assert stack.fake.total("GET", "/smuggled") == 0
    # A POST the client was refused (400/413) must not have reached slurmrestd:
    # uvicorn starts the app at the end of the head, before the body fails.
    answered = sum(
        1
        for n, raw in zip(names, raws, strict=True)
        if ATTACKS[n].startswith(b"POST") and raw.responses and raw.responses[0][0] < 400
    )
    assert sum(1 for m, *_ in seen if m == b"POST") == answered
    assert stack.proxy.app.stats.internal_errors == 0
    FIGURES["smuggling and injection attempts"] += len(names)


async def test_a_body_cut_short_is_never_forwarded(stack: Stack) -> None:
    """The client promises 100 bytes, sends 50 and hangs up."""
    head = POST + b"Content-Length: 100\r\n\r\n"
    await exchange(stack.proxy.port, head + b"{" * 50, wait=0.2)
    await asyncio.sleep(0.2)
    assert stack.fake.total("POST") == 0
    assert not [r for r in upstream_requests(stack) if r[0] == b"POST"]
    FIGURES["smuggling and injection attempts"] += 1


async def test_legitimate_chunked_and_pipelined_requests_still_work(stack: Stack) -> None:
    body = b'{"job": {}}'
    chunked = POST + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(body) + b"0\r\n\r\n"
    ping = b"GET /slurm/v0.0.43/ping HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n"
    raw = await exchange(stack.proxy.port, chunked + ping + ping, wait=1.0)
    assert [s for s, _, _ in raw.responses] == [200, 200, 200]
    sent = upstream_requests(stack)
    assert [(m, t) for m, t, _, _ in sent] == [
        (b"POST", b"/slurm/v0.0.43/job/submit"),
        (b"GET", b"/slurm/v0.0.43/ping"),
        (b"GET", b"/slurm/v0.0.43/ping"),
    ]
    assert sent[0][3] == body
    assert (b"content-length", b"%d" % len(body)) in sent[0][2]
