"""Small HTTP servers the bench tests run in-process.

* :class:`StubSlurm`: just enough slurmrestd for the workload (jobs, one job,
  nodes, partitions, slurmdb reads, submit, cancel) plus the simulator's
  ``/_sim/stats`` and ``/_sim/reset``; submits and cancels take effect at once.
* :class:`Forwarder`: a pass-through proxy; with ``cache_forever`` it keeps
  every GET answer per (user, path) and never invalidates: the broken cache
  the read-your-writes check must catch.
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

import aiohttp
import orjson
from aiohttp import web

VERSIONS = ("v0.0.38", "v0.0.43", "v0.0.44")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    def __init__(self) -> None:
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
        status=status,
        content_type="application/json",
    )


class StubSlurm(_Server):
    def __init__(self, users: int = 100, jobs: int = 30) -> None:
        super().__init__()
        self.tokens = {f"user{i:03d}": f"sim-token-user{i:03d}" for i in range(1, users + 1)}
        self.tokens.update({"root": "sim-token-root", "dashboard": "sim-token-dashboard"})
        self.jobs: dict[int, dict[str, Any]] = {}
        self.next_id = 1000
        for i in range(jobs):
            self._add_job(f"user{i % users + 1:03d}", "RUNNING")
        self.by_route: Counter[str] = Counter()
        r = self.app.router
        r.add_get("/_sim/stats", self.stats)
        r.add_post("/_sim/reset", self.reset)
        r.add_get("/slurm/{v}/jobs", self.list_jobs)
        r.add_get("/slurm/{v}/job/{id}", self.get_job)
        r.add_delete("/slurm/{v}/job/{id}", self.cancel)
        r.add_post("/slurm/{v}/job/submit", self.submit)
        r.add_get("/slurm/{v}/diag", self.diag)
        r.add_get("/slurm/{v}/nodes", self.listing("nodes"))
        r.add_get("/slurm/{v}/partitions", self.listing("partitions"))
        r.add_get("/slurm/{v}/reservations", self.listing("reservations"))
        r.add_get("/slurmdb/{v}/qos", self.listing("qos"))
        r.add_get("/slurmdb/{v}/associations", self.listing("associations"))
        r.add_get("/slurmdb/{v}/accounts", self.listing("accounts"))

    def _add_job(self, user: str, state: str) -> int:
        self.next_id += 1
        self.jobs[self.next_id] = {
            "job_id": self.next_id,
            "array_job_id": {"set": True, "number": 0},
            "user_name": user,
            "job_state": [state],
        }
        return self.next_id

    def _auth(self, request: web.Request, route: str) -> str | None:
        self.by_route[f"{request.method} {route}"] += 1
        user = request.headers.get("X-SLURM-USER-NAME", "")
        if self.tokens.get(user) != request.headers.get("X-SLURM-USER-TOKEN"):
            return None
        return user

    @staticmethod
    def _refused() -> web.Response:
        return web.Response(status=401, text="Authentication failure")

    async def stats(self, request: web.Request) -> web.Response:
        return _json(
            {
                "total": sum(self.by_route.values()),
                "by_route": dict(self.by_route),
                "by_method": {},
                "lock_wait_seconds": 0.0,
                "busy_seconds": 0.0,
            }
        )

    async def reset(self, request: web.Request) -> web.Response:
        self.by_route.clear()
        return _json({})

    async def diag(self, request: web.Request) -> web.Response:
        """slurmctld's RPC counters: one RPC per REST request (v0.0.38 shape)."""
        if self._auth(request, "GET /slurm/{v}/diag") is None:
            return self._refused()
        diag = self.by_route["GET /slurm/{v}/diag"]
        rpcs = [
            {"message_type": "REQUEST_JOB_INFO", "count": sum(self.by_route.values()) - diag},
            {"message_type": "REQUEST_STATS_INFO", "count": diag},
        ]
        return _json({"statistics": {"rpcs_by_message_type": rpcs}, "errors": []})

    async def list_jobs(self, request: web.Request) -> web.Response:
        if self._auth(request, "GET /slurm/{v}/jobs") is None:
            return self._refused()
        return _json({"jobs": list(self.jobs.values()), "errors": [], "warnings": []})

    async def get_job(self, request: web.Request) -> web.Response:
        if self._auth(request, "GET /slurm/{v}/job/{id}") is None:
            return self._refused()
        job = self.jobs.get(int(request.match_info["id"]))
        if job is None:
            return _json({"jobs": [], "errors": [{"error_number": 2017}]}, 404)
        return _json({"jobs": [job], "errors": [], "warnings": []})

    async def cancel(self, request: web.Request) -> web.Response:
        if self._auth(request, "DELETE /slurm/{v}/job/{id}") is None:
            return self._refused()
        job = self.jobs.get(int(request.match_info["id"]))
        if job is None:
            return _json({"errors": [{"error_number": 2017}]}, 404)
        job["job_state"] = ["CANCELLED"]
        return _json({"errors": [], "warnings": []})

    async def submit(self, request: web.Request) -> web.Response:
        user = self._auth(request, "POST /slurm/{v}/job/submit")
        if user is None:
            return self._refused()
        body = orjson.loads(await request.read())
        if "job" not in body:
            return _json({"errors": [{"error": "no job"}]}, 400)
        job_id = self._add_job(user, "PENDING")
        return _json({"job_id": job_id, "step_id": "batch", "errors": [], "warnings": []})

    def listing(self, key: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            if self._auth(request, f"GET {request.path}") is None:
                return self._refused()
            return _json({key: [{"name": f"{key}-{i}"} for i in range(3)], "errors": []})

        return handler


class Forwarder(_Server):
    """A pass-through proxy; ``cache_forever`` makes it a cache that never invalidates."""

    def __init__(self, upstream: str, *, cache_forever: bool) -> None:
        super().__init__()
        self.upstream = upstream
        self.cache_forever = cache_forever
        self.cache: dict[tuple[str, str], tuple[int, bytes, str]] = {}
        self.forwarded = 0
        self._session: aiohttp.ClientSession | None = None
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        key = (request.headers.get("X-SLURM-USER-NAME", ""), request.path_qs)
        if self.cache_forever and request.method == "GET" and key in self.cache:
            status, body, ctype = self.cache[key]
            return web.Response(
                status=status, body=body, content_type=ctype, headers={"Cache-Status": "stub; hit"}
            )
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower().startswith("x-slurm") or k.lower() == "content-type"
        }
        self.forwarded += 1
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as resp:
            body = await resp.read()
            ctype = resp.content_type
            status = resp.status
        if self.cache_forever and request.method == "GET" and status == 200:
            self.cache[key] = (status, body, ctype)
        return web.Response(
            status=status, body=body, content_type=ctype, headers={"Cache-Status": "stub; fwd=miss"}
        )
