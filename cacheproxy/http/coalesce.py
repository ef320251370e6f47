"""Request coalescing: one upstream fetch, many identical GETs.

A :class:`Flight` is one upstream fetch running as a background task.  Any
number of consumers read it: they all get the same status, headers and body
chunks, streamed as they arrive (so a 50 MB ``/jobs`` reaches the first client
while it is still being received).  A consumer that disconnects stops reading;
the fetch goes on for the others and still fills the cache.

A flight remembers the tag generations it started under.  A request joins it
only if the generations it sees now are the same: a request that arrives after
a write invalidated those tags must not get the pre-write answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from cacheproxy.store.base import Generations
from cacheproxy.upstream.base import Headers


class Flight:
    """One shared upstream fetch: its head, its body chunks and its outcome."""

    def __init__(self, generations: Generations, credential: bytes) -> None:
        self.generations = generations
        self.credential = credential
        """The credential the fetch was sent with (the leader's)."""
        self.status = 0
        self.headers: Headers = []
        self.error: BaseException | None = None
        self.done = False
        self.stored = False
        """The store took the answer (it may refuse: a write came between,
        too large, or it is down): what ``Cache-Status: stored`` says."""
        self.refused = False
        """slurmrestd refused the leader's credential: judged by the fetch,
        before the flight ends, from the leader's whole answer (status and
        body) with :func:`cacheproxy.core.policy.credential_refused`."""
        self.shareable = True
        """False once the body is too large to keep for late joiners."""
        self.revalidated = False
        """True when slurmrestd confirmed a cached copy (update_time)."""
        self.from_peer = False
        """True when another replica fetched it and this one read the entry."""
        self.shared = False
        """The fetch fills a shared entry (set by the fetch)."""
        self.splice: tuple[int, int] | None = None
        """Where the body's ``meta.client.source`` is, once stored as a
        shared entry (its followers get their own spliced in)."""
        self._head = asyncio.Event()
        self._done = asyncio.Event()
        self._changed = asyncio.Event()
        self._chunks: list[bytes] = []
        self._dropped = 0
        """Chunks already released (only while streaming an unshareable body)."""
        self._positions: dict[object, int] = {}
        self._on_done: list[Callable[[], None]] = []

    # -- producer side (the fetch task) -------------------------------------
    def set_head(self, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers
        self._head.set()

    def push(self, chunk: bytes) -> None:
        if chunk:
            self._chunks.append(chunk)
            self._wake()

    def finish(self) -> None:
        self.done = True
        self._head.set()
        self._done.set()
        self._wake()
        callbacks, self._on_done = self._on_done, []
        for callback in callbacks:
            callback()

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the flight is done (at once if it is)."""
        if self.done:
            callback()
        else:
            self._on_done.append(callback)

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.shareable = False
        self.finish()

    @property
    def released_any(self) -> bool:
        """Some body chunks are no longer held (see :meth:`stop_sharing`)."""
        return self._dropped > 0

    def body(self) -> bytes:
        """The whole body, once done (only meaningful while shareable)."""
        return b"".join(self._chunks)

    def stop_sharing(self) -> None:
        """Called when the body grows past what may be kept: late requests no
        longer join, and chunks every consumer has read are released."""
        self.shareable = False
        self._release_read_chunks()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _release_read_chunks(self) -> None:
        if self.shareable or not self._positions:
            return
        low = min(self._positions.values())
        drop = low - self._dropped
        if drop > 0:
            del self._chunks[:drop]
            self._dropped = low

    # -- consumer side ------------------------------------------------------
    async def wait_head(self) -> None:
        """Wait for the response head; raises the fetch's error if it failed."""
        await self._head.wait()
        if self.status == 0 and self.error is not None:
            raise self.error

    async def wait_done(self) -> None:
        """Wait until the whole body is in (or the fetch failed)."""
        await self._done.wait()

    async def stream(self) -> AsyncIterator[bytes]:
        """Every body chunk from the start; raises the fetch's error if the
        body broke mid-way (the consumer must then abort its response)."""
        token = object()  # held until the end: an id() could be reused at once
        self._positions[token] = self._dropped
        try:
            while True:
                pos = self._positions[token]
                index = pos - self._dropped
                if index < len(self._chunks):
                    chunk = self._chunks[index]
                    self._positions[token] = pos + 1
                    if not self.shareable:
                        self._release_read_chunks()
                    yield chunk
                    continue
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                await self._changed.wait()
        finally:
            del self._positions[token]


async def flight_refused(flight: Flight) -> bool:
    """For a request joined to ``flight`` with another credential than the
    leader's: must it ask slurmrestd itself instead?

    Yes when slurmrestd refused the leader's credential (a refusal may be
    told only in the body: 22.05's 500 "Unspecified error", slurmdbd's 200
    with error 1007), so the whole answer is awaited; and yes when the answer
    can no longer be replayed whole (chunks of a body too large to share
    were released while this request waited).
    """
    await flight.wait_done()
    return flight.refused or flight.released_any


class Coalescer:
    """Flights in progress, by flight key; keeps a reference to every task.

    Holding the tasks matters: the event loop keeps only weak references, and a
    fetch whose first client went away must still finish for the others.
    """

    def __init__(self) -> None:
        self._flights: dict[bytes, Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, key: bytes, generations: Generations) -> Flight | None:
        """The flight to join, if one is running under the same generations."""
        flight = self._flights.get(key)
        if flight is None or not flight.shareable or flight.generations != generations:
            return None
        return flight

    def start(
        self,
        key: bytes,
        generations: Generations,
        credential: bytes,
        run: Callable[[Flight], Coroutine[Any, Any, None]],
    ) -> Flight:
        flight = Flight(generations, credential)
        self._flights[key] = flight
        task = asyncio.get_running_loop().create_task(self._run(key, flight, run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flight

    async def _run(
        self, key: bytes, flight: Flight, run: Callable[[Flight], Coroutine[Any, Any, None]]
    ) -> None:
        try:
            await run(flight)
        except BaseException as exc:  # the flight must always end for its consumers
            if not flight.done:
                flight.fail(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if not flight.done:
                flight.finish()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
