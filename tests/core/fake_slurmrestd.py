"""A small fake slurmrestd for the core tests: counts what it serves, names
the requester in ``meta.client`` like v0.0.40+, and can be held mid-request
to stage races.  The full simulator lives in ``cacheproxy.simulator``.

It authenticates exactly as the chosen ``release`` of slurmrestd does
(:mod:`cacheproxy.simulator.auth`, one implementation for both fakes): in
22.05 the name is required and Bearer ignored; later a token alone acts as
its owner, both token headers together are refused, and 25.11 answers a
request without any credential 500.  Every answer names the user it was
made for (``meta.client.user``) and echoes the query as that release parses
it (``meta.query``), so a test sees whose answer, to which question, it got.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from cacheproxy.simulator.auth import Authenticator, AuthError, Release, refusal

Scope = dict[str, Any]

AUTH_FAILURE = b"Authentication failure"


@dataclass
class Job:
    job_id: int
    user: str
    state: str = "PENDING"
    array_job_id: int = 0
    """The array this job is a task of (its own id is ``job_id``)."""
    array_task_id: int | None = None
    het_job_id: int = 0
    """The het job this is a component of (component ``job_id - het_job_id``)."""


_JOB_ID = re.compile(r"\s*\+?([0-9]+)(?:_([0-9]+)|\+([0-9]+))?\Z")


def parse_job_id(text: str) -> tuple[int, int | None, int | None] | None:
    """``(job, array task, het offset)`` as slurmrestd reads a path's job id
    (``strtol``: ``0124`` is 124; ``123_1`` a task, ``123+1`` a component)."""
    m = _JOB_ID.match(text)
    if m is None or int(m.group(1)) == 0:
        return None
    task, het = m.group(2), m.group(3)
    return int(m.group(1)), None if task is None else int(task), None if het is None else int(het)


@dataclass
class FakeSlurmrestd:
    tokens: dict[str, str] = field(
        default_factory=lambda: {"root": "tok-root", "alice": "tok-alice", "bob": "tok-bob"}
    )
    private_jobs: bool = True
    jobs: dict[int, Job] = field(default_factory=dict)
    next_id: int = 1000
    hits: Counter[str] = field(default_factory=Counter)
    """'METHOD /path' -> requests served."""
    bodies: list[bytes] = field(default_factory=list)
    gate: asyncio.Event | None = None
    """When set, GET /jobs waits on it (to hold a fetch in flight)."""
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    fail_next: int = 0
    """Answer this many requests with a 500 error body."""
    clock: Any = None
    """Wall clock shared with the proxy under test (for update_time)."""
    last_change: float = 0.0
    queries: list[bytes] = field(default_factory=list)
    release: Release = "22.05"
    """Whose authentication rules (and query parsing) to follow."""
    extra_tokens: dict[str, str] = field(default_factory=dict)
    """More tokens: token -> owner (e.g. JWTs naming their owner)."""

    def _now(self) -> float:
        import time

        return float(self.clock()) if self.clock is not None else time.time()

    def total(self, method: str = "GET", suffix: str = "") -> int:
        return sum(n for k, n in self.hits.items() if k.startswith(method) and k.endswith(suffix))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        method = scope["method"]
        self.queries.append(scope.get("query_string", b""))
        parts = [p for p in scope["path"].split("/") if p]
        self.hits[f"{method} /{'/'.join(parts)}"] += 1
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        status, ctype, payload, close = await self._handle(method, parts, headers, body, scope)
        out = [(b"content-type", ctype), (b"content-length", str(len(payload)).encode())]
        if close:
            out.append((b"connection", b"Close"))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": payload})

    def _error(self, number: int, text: str) -> bytes:
        return orjson.dumps(
            {
                "errors": [{"error_number": number, "error": text, "description": text}],
                "warnings": [],
                "meta": {},
            },
            option=orjson.OPT_INDENT_2,
        )

    async def _handle(
        self, method: str, parts: list[str], headers: dict[str, str], body: bytes, scope: Scope
    ) -> tuple[int, bytes, bytes, bool]:
        if parts and parts[0] == "openapi":  # 22.05 serves it without asking slurmctld
            doc = orjson.dumps({"openapi": "3.0.2", "info": {}}, option=orjson.OPT_INDENT_2)
            return 200, b"application/json", doc, False
        if len(parts) < 2 or parts[0] not in ("slurm", "slurmdb"):
            return 404, b"text/plain", b"Unable find requested URL.", True
        authenticator = Authenticator(self.tokens)
        authenticator.owner.update(self.extra_tokens)
        try:
            name = authenticator.authenticate(scope["headers"], self.release).user
        except AuthError as exc:
            if exc.missing:
                status, text = refusal(self.release, exc.kind)
                return status, b"text/plain", text, True
            if self.release == "22.05":
                return 500, b"application/json", self._error(-1, "Unspecified error"), True
            return (
                511,
                b"application/json",
                self._error(1007, "Protocol authentication error"),
                True,
            )
        raw_query = scope.get("query_string", b"")
        if method == "GET" and body:
            if self.release == "22.05":
                return 400, b"text/plain", b"Unable to parse query.", True
            try:  # since 23.11.6: the body is the query
                parsed_query: object = orjson.loads(body)
            except orjson.JSONDecodeError:
                return 400, b"text/plain", b"Unable to parse query.", True
        else:
            parsed_query = slurmrestd_query(raw_query, self.release)
            if parsed_query is None:
                return 400, b"text/plain", b"Unable to parse query.", True
        if self.fail_next > 0:
            self.fail_next -= 1
            return 500, b"application/json", self._error(1, "Transient failure"), True
        rest = parts[2:]
        accept = headers.get("accept", "")

        def ok(doc: dict[str, Any]) -> tuple[int, bytes, bytes, bool]:
            doc.setdefault("errors", [])
            doc.setdefault("warnings", [])
            doc["meta"] = {
                "client": {"user": name, "source": str(scope.get("client"))},
                "query": parsed_query,
            }
            if "yaml" in accept:
                text = "\n".join(f"{k}: {orjson.dumps(v).decode()}" for k, v in doc.items())
                return 200, b"application/x-yaml", text.encode(), False
            return 200, b"application/json", orjson.dumps(doc, option=orjson.OPT_INDENT_2), False

        def visible() -> list[dict[str, Any]]:
            return [
                {"job_id": j.job_id, "user_name": j.user, "job_state": j.state}
                for j in self.jobs.values()
                if not self.private_jobs or name == "root" or j.user == name
            ]

        query = parsed_query if isinstance(parsed_query, dict) else {}
        since = query.get("update_time")
        if isinstance(since, list):
            since = since[-1]
        unchanged = isinstance(since, str) and float(since) >= self.last_change
        if method == "GET" and rest == ["jobs"] and unchanged:
            if parts[1] == "v0.0.38":
                return 304, b"", b"", False
            warning = {"description": "No job changes since update_time"}
            return ok({"jobs": [], "warnings": [warning]})
        if method == "GET" and rest == ["jobs"]:
            snapshot = visible()  # the answer is decided now, sent later
            self.entered.set()
            if self.gate is not None:
                await self.gate.wait()
            return ok({"jobs": snapshot})
        if method == "GET" and rest == ["ping"]:
            return ok({"pings": [{"hostname": "localhost", "pinged": "UP"}]})
        if method == "GET" and rest == ["partitions"]:
            return ok({"partitions": [{"name": "debug"}]})
        if method == "GET" and rest == ["nodes"]:
            return ok({"nodes": [{"name": "n1", "state": "idle"}]})
        if method == "GET" and rest == ["big"]:
            return ok({"blob": "x" * int(headers.get("x-size", "1000"))})
        if method == "GET" and rest == ["witherrors"]:
            return ok({"errors": [{"error": "partial"}], "nodes": []})
        if method == "GET" and len(rest) == 2 and rest[0] == "job":
            # 25.x: "123_1" shows every task of array 123, "123+1" job 124
            parsed = parse_job_id(rest[1])
            shown: list[Job] = []
            if parsed is not None:
                base, task, het = parsed
                if task is not None:
                    shown = [j for j in self.jobs.values() if base in (j.job_id, j.array_job_id)]
                else:
                    one = self.jobs.get(base + (het or 0))
                    shown = [] if one is None else [one]
            mine = {j["job_id"] for j in visible()}
            if not shown or any(j.job_id not in mine for j in shown):
                return 500, b"application/json", self._error(2017, "Invalid job id specified"), True
            return ok({"jobs": [{"job_id": j.job_id, "job_state": j.state} for j in shown]})
        if method == "POST" and rest == ["job", "submit"]:
            self.bodies.append(body)
            self.next_id += 1
            self.jobs[self.next_id] = Job(self.next_id, name)
            self.last_change = self._now()
            return ok(
                {
                    "job_id": self.next_id,
                    "step_id": "batch",
                    "sha256": hashlib.sha256(body).hexdigest(),
                }
            )
        if method == "DELETE" and len(rest) == 2 and rest[0] == "job":
            # KILL_FULL_JOB: a whole array or het job by its id, one task by N_T
            parsed = parse_job_id(rest[1])
            hit: list[Job] = []
            if parsed is not None:
                base, task, _ = parsed
                hit = [
                    j
                    for j in self.jobs.values()
                    if (task is None and base in (j.job_id, j.array_job_id, j.het_job_id))
                    or (task is not None and j.array_job_id == base and j.array_task_id == task)
                ]
            if not hit:
                return 500, b"application/json", self._error(2017, "Invalid job id specified"), True
            for job in hit:
                job.state = "CANCELLED"
            self.last_change = self._now()
            return ok({})
        if method == "POST" and len(rest) == 2 and rest[0] == "echo":
            self.bodies.append(body)
            return 200, b"application/octet-stream", body, False
        return 404, b"text/plain", b"Unable find requested URL.", True


_QUERY_TOKEN = re.compile(rb"[0-9A-Za-z~._-]+|%..|.", re.DOTALL)


def slurmrestd_query(raw: bytes, release: Release) -> dict[str, Any] | None:
    """The query as slurmrestd's url-encoded serializer reads it (None: it
    answers 400): in 22.05 and 23.11 a repeated key's last value wins and a
    bare ``key`` is null (22.05) or true; from 24.05 repeated values make a
    list.  Written apart from the proxy's canonicaliser on purpose."""
    out: dict[str, Any] = {}
    key: str | None = None
    buf: str | None = None

    def done() -> None:
        nonlocal key, buf
        if key is None and buf is None:
            return
        k, v = (buf, None if release == "22.05" else True) if key is None else (key, buf)
        assert k is not None
        if release == "25.11" and k in out:
            prior = out[k]
            out[k] = [*prior, v] if isinstance(prior, list) else [prior, v]
        else:
            out[k] = v
        key = buf = None

    for m in _QUERY_TOKEN.finditer(raw):
        t = m.group()
        if t[0] == 0x25:  # %
            try:
                byte = bytes.fromhex(t[1:].decode("latin-1"))
            except ValueError:
                return None
            if len(t) != 3 or byte in (b"\x00", b"\xff"):
                return None
            buf = (buf or "") + byte.decode("latin-1")
        elif t in (b"&", b";"):
            done()
        elif t == b"+":
            buf = (buf or "") + " "
        elif t == b"=":
            if key is None and buf is None:
                return None
            if key is None:
                key, buf = buf, None
            elif buf is not None:
                return None
        elif re.fullmatch(rb"[0-9A-Za-z~._-]+", t):
            buf = (buf or "") + t.decode()
        else:
            return None
    done()
    return out
