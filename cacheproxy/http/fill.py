"""The miss path: the body of a flight.  One upstream fetch, streamed to
every consumer of the flight, its credential judged, and stored when policy
allows; a stale copy of a list that revalidates is refreshed with
``update_time`` instead; with a store shared by replicas, one replica at a
time fetches a key (a lease) and the others read its entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from cacheproxy.core import compress, decide, headers, policy
from cacheproxy.core.identity import Identity
from cacheproxy.core.request import ProxyRequest
from cacheproxy.core.rules import Match
from cacheproxy.http.coalesce import Flight
from cacheproxy.http.credentials import Credentials
from cacheproxy.http.forward import upstream_headers
from cacheproxy.stats import Stats
from cacheproxy.store.base import Entry, Store, StoreError
from cacheproxy.upstream.base import Headers, Transport, UpstreamRequest, UpstreamResponse

log = logging.getLogger("cacheproxy.proxy")
"""The proxy's log, as before these modules were split out of it."""

UPDATE_TIME_MARGIN = 2
"""Seconds subtracted from the cached copy's time when revalidating: covers
clock skew with slurmctld (an earlier update_time only costs a full list)."""
_NO_CHANGE_MAX = 64 * 1024
"""A 25.x "No job changes" answer is small; larger 200s are full lists."""


class Filler:
    """Fills flights from upstream and the cache from flights; owns the
    background tasks that compress large entries after they are stored.
    A store that cannot answer is only counted (it logs once per episode
    itself): the fetch is shared all the same."""

    def __init__(
        self,
        *,
        store: Store,
        transport: Transport,
        stats: Stats,
        credentials: Credentials,
        clock: Callable[[], float],
        upstream_host: bytes,
        max_entry_bytes: int,
        shared: bool,
        lease_seconds: float,
        lease_wait: float,
    ) -> None:
        self.store = store
        self.transport = transport
        self.stats = stats
        self.credentials = credentials
        self.clock = clock
        self.upstream_host = upstream_host
        self.max_entry_bytes = max_entry_bytes
        self.shared = shared
        """The store is shared by replicas: fetches take a lease per key."""
        self.lease_seconds = lease_seconds
        self.lease_wait = lease_wait
        self._background: set[asyncio.Task[None]] = set()
        self.on_shared_fill: Callable[[str, bytes, str | None, Entry], None] | None = None
        """Told of every shared entry stored from upstream's answer of this
        moment (fetched whole or revalidated): (rule name, key, the filler's
        user or None for a revalidation, the entry); the audit of shared views."""

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def fetch(
        self,
        flight: Flight,
        req: ProxyRequest,
        match: Match,
        identity: Identity,
        key: bytes,
        accepted: bool,
        stale: Entry | None = None,
        *,
        shared: bool = False,
        refresh: bool = True,
    ) -> None:
        """The body of a flight: fetch once, share with every consumer, store
        (``shared``: as the one entry of every accepted credential).

        ``stale`` is an expired but still valid entry of a rule that
        revalidates with ``update_time``: slurmctld then only says whether the
        list changed, instead of building and sending it again.
        """
        flight.shared = shared
        flight.refresh = refresh
        lease = False
        if self.shared and accepted:
            lease = await self._acquire_lease(key)
            if not lease and await self._wait_for_peer(flight, match, identity, key):
                return
        try:
            if stale is None or not await self._revalidate(
                flight, req, match, identity, key, stale
            ):
                await self._fetch_upstream(flight, req, match, identity, key)
        finally:
            if lease:
                try:
                    await self.store.release_lease(key)
                except StoreError:
                    self.stats.store_errors += 1

    async def _revalidate(
        self,
        flight: Flight,
        req: ProxyRequest,
        match: Match,
        identity: Identity,
        key: bytes,
        stale: Entry,
    ) -> bool:
        """Ask slurmrestd whether ``stale`` is still current.

        True when the flight was completed (renewed, or replaced by the full
        list slurmrestd sent instead); False when the answer was neither
        (e.g. an error some versions give for ``update_time``): the caller
        then fetches the plain resource, so the client never sees an answer
        to a question it did not ask.
        """
        since = int(stale.origin or stale.stored_at) - UPDATE_TIME_MARGIN
        sep = "&" if "?" in req.raw_target else "?"
        target = f"{req.raw_target}{sep}update_time={since}"
        resp, sent_at = await self._send(req, match, identity, target)
        try:
            status = resp.status
            resp_headers = headers.response_headers(resp.headers)
            length = policy.content_length(resp_headers)
            small = length is not None and length <= _NO_CHANGE_MAX
            if status == 304 or (status == 200 and small):
                body = resp.body_if_complete()
                if body is None:
                    body = b"".join([c async for c in resp.aiter_body()])
            elif status == 200:
                # A full list: share and store it as any fetch would.
                await self._fill_flight(flight, resp, resp_headers, match, key, sent_at)
                return True
            else:
                return False
        finally:
            await resp.aclose()
        if status == 304 or policy.no_changes(body):
            renewed = dataclasses.replace(
                stale, stored_at=self.clock(), origin=sent_at, generations=flight.generations
            )
            await self._put(flight, key, renewed)
            self._tell_shared(flight, match, key, None, renewed)
            flight.splice = renewed.splice
            flight.revalidated = True
            flight.set_head(renewed.status, renewed.headers)
            flight.push(renewed.body)
            flight.finish()
            return True
        # A small full list: complete the flight with it.
        flight.set_head(status, resp_headers)
        flight.push(body)
        flight.refused = policy.credential_refused(status, body)
        stored = await self._complete(flight, status, resp_headers, body, match, key, sent_at)
        self._tell_shared(flight, match, key, None, stored)
        return True

    async def _fetch_upstream(
        self, flight: Flight, req: ProxyRequest, match: Match, identity: Identity, key: bytes
    ) -> None:
        resp, sent_at = await self._send(req, match, identity, req.raw_target)
        try:
            resp_headers = headers.response_headers(resp.headers)
            await self._fill_flight(flight, resp, resp_headers, match, key, sent_at, identity)
        finally:
            await resp.aclose()

    async def _send(
        self, req: ProxyRequest, match: Match, identity: Identity, target: str
    ) -> tuple[UpstreamResponse, float]:
        """GET ``target`` upstream for ``req`` (in ``identity``'s turn); the
        response (its head) and the wall-clock time it was asked at (a cached
        copy's origin)."""
        up = UpstreamRequest(
            method="GET",
            target=target,
            headers=upstream_headers(req, self.upstream_host, None),
            retry_on_stale_connection=True,
            user=identity.user,
            cost=policy.upstream_cost(match),
        )
        self.stats.upstream_requests[match.name] += 1
        sent_at = self.clock()
        started = time.monotonic()
        resp = await self.transport.send(up)
        self.stats.observe_upstream(match.name, time.monotonic() - started)
        return resp, sent_at

    async def _fill_flight(
        self,
        flight: Flight,
        resp: UpstreamResponse,
        resp_headers: Headers,
        match: Match,
        key: bytes,
        sent_at: float,
        identity: Identity | None = None,
    ) -> None:
        """Stream ``resp`` to the flight's consumers, judge ``identity``'s
        credential by the answer, and store it if it may be."""
        limit = self.max_entry_bytes
        status = resp.status
        flight.set_head(status, resp_headers)
        length = policy.content_length(resp_headers)
        too_big = length is not None and length > limit
        if status != 200 or too_big:
            flight.stop_sharing()
        whole = resp.body_if_complete()
        if whole is not None:  # a small answer, all in with its head
            head = whole[:4096]
            flight.push(whole)
            if len(whole) > limit:
                too_big = True
                flight.stop_sharing()
        else:
            size = 0
            head = b""
            async for chunk in resp.aiter_body():
                if len(head) < 4096:
                    head += chunk[: 4096 - len(head)]
                size += len(chunk)
                flight.push(chunk)
                if size > limit and not too_big:
                    too_big = True
                    flight.stop_sharing()
        if too_big and status == 200:
            self.stats.too_big[match.name] += 1  # passed through, never cached
        body = flight.body() if flight.shareable else b""
        flight.dropped = policy.controller_dropped(status, head)
        if identity is not None:  # one reading of the body for both questions
            flight.refused = await self.credentials.judge(
                identity, match, status, body if flight.shareable else None, head, resp_headers
            )
        else:
            flight.refused = policy.credential_refused(status, body if flight.shareable else head)
        stored = await self._complete(flight, status, resp_headers, body, match, key, sent_at)
        self._tell_shared(flight, match, key, identity, stored)

    def _tell_shared(
        self, flight: Flight, match: Match, key: bytes, filler: Identity | None, entry: Entry | None
    ) -> None:
        """Tell :attr:`on_shared_fill` of a shared entry stored from this
        moment's answer (``filler`` None: a revalidation, whose body is the
        earlier filler's, confirmed current by slurmctld)."""
        hook = self.on_shared_fill
        if hook is not None and entry is not None and flight.shared and flight.stored:
            hook(match.name, key, None if filler is None else filler.user, entry)

    async def _complete(
        self,
        flight: Flight,
        status: int,
        resp_headers: Headers,
        body: bytes,
        match: Match,
        key: bytes,
        sent_at: float,
    ) -> Entry | None:
        """Store the flight's response as :func:`decide.to_store` says, then
        end the flight; the entry stored (None: not stored)."""
        store = (
            None
            if not flight.refresh
            else decide.to_store(
                status,
                resp_headers,
                body,
                match,
                flight.generations,
                shareable=flight.shareable,
                max_entry_bytes=self.max_entry_bytes,
                now=self.clock(),
                origin=sent_at,
                shared=flight.shared,
            )
        )
        if store is not None:
            entry = store.entry
            flight.splice = entry.splice
            if store.compress_now:
                entry = dataclasses.replace(entry, variants=_variants(body, entry.splice))
            await self._put(flight, key, entry)
            if store.compress_later and flight.stored:
                # Large bodies are compressed off the response path (tens of
                # ms of CPU for a big list): the entry is stored plain now and
                # replaced by its compressed form unless a write came between.
                self._spawn(self._store_compressed(key, entry))
        flight.finish()
        return entry if store is not None and flight.stored else None

    async def _store_compressed(self, key: bytes, entry: Entry) -> None:
        variants = await asyncio.to_thread(_variants, entry.body, entry.splice)
        if variants:
            try:
                await self.store.put(key, dataclasses.replace(entry, variants=variants))
            except StoreError:
                self.stats.store_errors += 1

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends
        (the loop holds only weak ones)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _put(self, flight: Flight, key: bytes, entry: Entry) -> None:
        """Store ``entry``; ``flight.stored`` says whether the store took it."""
        try:
            flight.stored = await self.store.put(key, entry)
        except StoreError:
            self.stats.store_errors += 1

    async def _acquire_lease(self, key: bytes) -> bool:
        try:
            return await self.store.acquire_lease(key, self.lease_seconds)
        except StoreError:
            self.stats.store_errors += 1
            return True

    async def _wait_for_peer(
        self, flight: Flight, match: Match, identity: Identity, key: bytes
    ) -> bool:
        """Another replica is fetching ``key``: wait (bounded) for its entry.

        True when the flight was completed from the peer's entry.
        """
        deadline = time.monotonic() + self.lease_wait
        delay = 0.005
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            try:
                found = await self.store.lookup(key, match.tags, identity.credential)
            except StoreError:
                self.stats.store_errors += 1
                return False
            entry = found.entry
            if entry is not None and decide.peer_entry_usable(
                entry, match, found, flight.generations, self.clock()
            ):
                flight.from_peer = True
                flight.stored = True
                flight.splice = entry.splice
                flight.set_head(entry.status, entry.headers)
                flight.push(entry.body)
                flight.finish()
                return True
        return False


def _variants(
    body: bytes, splice_at: tuple[int, int] | None = None
) -> tuple[tuple[bytes, bytes], ...]:
    """Compressed copies of ``body``; none if compression fails (it is an
    optimisation, never the reason a request fails)."""
    try:
        return compress.make_variants(body, splice_at)
    except Exception:
        log.exception("compressing an entry failed; keeping it uncompressed")
        return ()
