"""Helpers the realslurm tests share: comparisons, Cache-Status, a raw burst."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import h11
import httpx

MASKED_KEYS = frozenset({"cpu_load", "free_memory", "last_busy", "last_sched_evaluation"})
"""Fields slurmctld moves on its own between two reads a few ms apart (node
load and memory samples, scheduler passes). Everything else must be equal."""


def masked(value: Any) -> Any:
    """``value`` with every :data:`MASKED_KEYS` entry replaced, at any depth."""
    if isinstance(value, dict):
        return {k: "<masked>" if k in MASKED_KEYS else masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def listed_jobs(resp: httpx.Response) -> set[int]:
    """Job ids a response discloses, whatever its status (none if not JSON)."""
    try:
        body = resp.json()
    except ValueError:
        return set()
    jobs = body.get("jobs") if isinstance(body, dict) else None
    return {int(j["job_id"]) for j in jobs or []}


def cache_status(resp: httpx.Response) -> str:
    value: str | None = resp.headers.get("cache-status")
    assert value is not None, f"no Cache-Status on {resp.request.method} {resp.request.url}"
    assert value.startswith("cacheproxy;"), value
    return value


def is_hit(resp: httpx.Response) -> bool:
    return "; hit" in resp.headers.get("cache-status", "")


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def burst(url: str, headers: Mapping[str, str], n: int) -> list[RawResponse]:
    """``n`` identical GETs written onto ``n`` open connections in one go.

    Raw sockets, not an HTTP client: a client library's per-request overhead
    (about 1 ms in httpx) would spread 50 requests over longer than slurmrestd
    takes to answer, and the test would measure caching, not coalescing.
    """
    target = httpx.URL(url)
    host, port = target.host, target.port or 80
    path = target.raw_path.decode()
    conns = [await asyncio.open_connection(host, port) for _ in range(n)]
    try:
        parsers = []
        for _, writer in conns:
            parser = h11.Connection(h11.CLIENT)
            head = [("Host", f"{host}:{port}"), *headers.items()]
            writer.write(parser.send(h11.Request(method="GET", target=path, headers=head)))
            writer.write(parser.send(h11.EndOfMessage()))
            parsers.append(parser)
        return await asyncio.gather(
            *(_read(parser, reader) for parser, (reader, _) in zip(parsers, conns, strict=True))
        )
    finally:
        for _, writer in conns:
            writer.close()
            await writer.wait_closed()


async def _read(parser: h11.Connection, reader: asyncio.StreamReader) -> RawResponse:
    status, hdrs, body = 0, {}, bytearray()
    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            parser.receive_data(await asyncio.wait_for(reader.read(65536), 30))
        elif isinstance(event, h11.Response):
            status = event.status_code
            hdrs = {k.decode().lower(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return RawResponse(status, hdrs, bytes(body))
