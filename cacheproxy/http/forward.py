"""Pass-through: every request the cache does not answer goes to slurmrestd
as is (hop-by-hop headers aside), and a write bumps the tags it invalidates.

When a write invalidates (defect 2 of issue 14): after slurmrestd's answer,
before it reaches the client (read-your-writes), unless the answer says
slurmrestd did nothing (:func:`cacheproxy.core.policy.write_refused`: a refused
credential, a request rejected before any handler ran).  Also before it is
forwarded, to narrow the window in which a reader refills the cache with
pre-write data, but only for a write some rule knows, from a credential
slurmrestd has already accepted: an unknown or unauthenticated client can
then empty nobody's cache, not even for a moment.  The credential is the one
slurmrestd will see, read from the very headers forwarded.

A GET the cache does not serve is answered whole when slurmrestd's answer is
a success of known, moderate length (:meth:`Forwarder.uncached_get`): the
server protocol may then write it with no ASGI cycle.  Any other answer (an
error status; a large or unframed body, which must stream) and any upstream
fault are relayed through the ASGI cycle, exactly as what is forwarded there.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence

from cacheproxy.core import decide, errors, headers, policy
from cacheproxy.core.identity import IdentityResolver
from cacheproxy.core.plan import Route
from cacheproxy.core.request import (
    BadRequest,
    ProxyRequest,
    TargetTooLong,
    client_host,
    from_scope,
    parse_target,
    raw_target,
    target_of,
)
from cacheproxy.core.rules import Match, RuleSet
from cacheproxy.http.answer import AbortResponse, relay, send_upstream_error
from cacheproxy.http.credentials import Credentials
from cacheproxy.http.pipeline import Answer, Continue, Exchange, Outcome
from cacheproxy.http.respond import Receive, Scope, Send, send_error
from cacheproxy.stats import Stats
from cacheproxy.store.base import Store, StoreError
from cacheproxy.upstream.base import (
    Headers,
    Transport,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
)

_READ_REQUEST_BELOW = 1024 * 1024
_WHOLE_BODY_MAX = 1024 * 1024
"""The largest answer to an uncached GET held whole before it is written;
larger ones stream through the ASGI cycle."""
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


def _has_body(request_headers: Headers) -> bool:
    """A body to read (through the ASGI cycle) comes with the request."""
    return any(k in _BODY_HEADERS for k, _ in request_headers)


class Forwarder:
    """Forwards requests upstream; counts the writes it makes (``local_writes``)."""

    def __init__(
        self,
        *,
        rules: RuleSet,
        store: Store,
        transport: Transport,
        stats: Stats,
        resolver: IdentityResolver,
        credentials: Credentials,
        clock: Callable[[], float],
        upstream_host: bytes,
        max_body_bytes: int,
        max_url_bytes: int,
    ) -> None:
        self.rules = rules
        self.store = store
        self.transport = transport
        self.stats = stats
        self.resolver = resolver
        self.credentials = credentials
        self.clock = clock
        self.upstream_host = upstream_host
        self.max_body_bytes = max_body_bytes
        self.max_url_bytes = max_url_bytes
        self.local_writes = 0
        """Tag bumps this process made: what moves the generations a request
        sees while the store cannot answer (read-your-writes holds)."""

    async def not_cached(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route | None = None,
        ex: Exchange | None = None,
    ) -> None:
        """Everything but a cacheable GET with credentials: validate, forward.

        ``route`` is the GET's memoised parse and match: not redone here."""
        match = None
        try:
            if route is None:
                req = from_scope(scope, parse_target(*target_of(scope), self.max_url_bytes))
            else:
                req = from_scope(scope, (route.segments, route.query))
                match = route.match
        except TargetTooLong:
            self.stats.bad_requests += 1
            await send_error(send, errors.URL_TOO_LONG, "fwd=request; detail=url-too-long")
            return
        except BadRequest as exc:
            self.stats.bad_requests += 1
            await send_error(send, errors.bad_request(str(exc)), "fwd=request; detail=bad-request")
            return
        method = req.method
        if match is None:
            match = self.rules.match(method, req.segments)
        if ex is not None:
            ex.rule = match.name
        decision = decide.uncached(method, match)
        if isinstance(decision, decide.Refuse):
            err = errors.ProxyError(decision.status, "Method not allowed", decision.reason)
            await send_error(send, err, "fwd=request; detail=method")
            return
        outcome = decision.outcome
        await self.forward(req, match, receive, send, outcome)

    def uncached_get(self, ex: Exchange, route: Route) -> Outcome:
        """A GET the cache does not serve: slurmrestd's answer whole, when it
        is a success of known, moderate length (the server protocol may then
        write it without an ASGI cycle); streamed through the cycle otherwise."""
        scope = ex.scope
        if route.match.invalidates or _has_body(scope["headers"]):
            return Continue(lambda receive, send: self.not_cached(scope, receive, send, route))
        return self._forward_whole(ex, route)

    async def _forward_whole(self, ex: Exchange, route: Route) -> Answer:
        scope, match = ex.scope, route.match
        outcome = decide.forward_outcome("GET", match)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        up_headers = headers.upstream_request_headers(
            scope["headers"],
            upstream_host=self.upstream_host,
            client=client_host(scope),
            scheme=scope.get("scheme", "http"),
            body_length=None,
        )
        up = UpstreamRequest(
            method="GET",
            target=raw_target(raw_path, scope["query_string"]),
            headers=up_headers,
            retry_on_stale_connection=True,
            user=self._user(up_headers),
            cost=policy.upstream_cost(match),
        )
        stats = self.stats
        stats.upstream_requests[match.name] += 1
        started = time.monotonic()
        try:
            resp = await self.transport.send(up)
        except UpstreamError as exc:
            return self._relayed(exc, match, outcome)
        stats.observe_upstream(match.name, time.monotonic() - started)
        length = policy.content_length(resp.headers)
        if resp.status >= 400 or length is None or length > _WHOLE_BODY_MAX:
            return self._relayed(resp, match, outcome)  # streamed, and released there
        try:
            body = resp.body_if_complete()
            if body is None:
                body = b"".join([chunk async for chunk in resp.aiter_body()])
        except UpstreamError as exc:
            # Nothing is sent yet: the client gets a clean error, not a cut body.
            return self._relayed(exc, match, outcome)
        finally:
            await resp.aclose()
        out = headers.response_headers(resp.headers)
        out.append(_CACHE_STATUS[outcome])
        stats.requests[(match.name, outcome)] += 1
        ex.lane = "forward"
        return resp.status, out, body

    def _user(self, up_headers: Headers) -> str:
        """Whose turn a request takes in the fair upstream queue: the user
        its credential names (no credential: one anonymous line)."""
        sender = self.resolver.resolve(up_headers)
        return "" if sender is None else sender.user

    def _relayed(
        self, answer: UpstreamResponse | UpstreamError, match: Match, outcome: str
    ) -> Continue:
        """Upstream's answer (or fault), relayed through the ASGI cycle."""
        return Continue(lambda receive, send: self._answer(answer, match, send, outcome, ()))

    async def forward(
        self,
        req: ProxyRequest,
        match: Match,
        receive: Receive | None,
        send: Send,
        outcome: str,
    ) -> None:
        """Forward as is; a write invalidates as the module docstring says."""
        tags = match.invalidates
        try:
            body, length = await self._request_body(req, receive)
        except _BodyTooLarge:
            self.stats.requests[(match.name, "error")] += 1
            await send_error(send, errors.BODY_TOO_LARGE, outcome)
            return
        except _ClientGone:
            return  # nobody to answer, and a partial body must never go upstream
        up_headers = upstream_headers(req, self.upstream_host, length)
        sender = self.resolver.resolve(up_headers)  # as slurmrestd will see it
        if tags and decide.invalidates_before(match, await self.credentials.accepted(sender)):
            await self._bump(tags)
        up = UpstreamRequest(
            method=req.method,
            target=req.raw_target,
            headers=up_headers,
            body=body,
            retry_on_stale_connection=req.method in ("GET", "HEAD", "OPTIONS"),
            user="" if sender is None else sender.user,
            cost=policy.upstream_cost(match),
        )
        self.stats.upstream_requests[match.name] += 1
        started = time.monotonic()
        try:
            resp = await self.transport.send(up)
        except UpstreamError as exc:
            if decide.invalidates_after_fault(match, exc.sent):
                await self._bump(tags)  # it may have been done: nothing says otherwise
            self.stats.requests[(match.name, "error")] += 1
            await send_upstream_error(send, exc, outcome, self.stats)
            return
        self.stats.observe_upstream(match.name, time.monotonic() - started)
        await self._answer(resp, match, send, outcome, tags)

    async def _answer(
        self,
        resp: UpstreamResponse | UpstreamError,
        match: Match,
        send: Send,
        outcome: str,
        tags: Sequence[str],
    ) -> None:
        """Relay upstream's answer (or error) to the client, then release it;
        a write's tags are bumped first, unless slurmrestd refused it."""
        if isinstance(resp, UpstreamError):
            self.stats.requests[(match.name, "error")] += 1
            await send_upstream_error(send, resp, outcome, self.stats)
            return
        try:
            body = None
            if tags:
                try:
                    body = await _small_body(resp)
                except UpstreamError as exc:
                    await self._bump(tags)  # an answer came: it may be done
                    self.stats.requests[(match.name, "error")] += 1
                    await send_upstream_error(send, exc, outcome, self.stats)
                    return
                if decide.invalidates(match, resp.status, resp.headers, body):
                    await self._bump(tags)
            chunks = resp.aiter_body() if body is None else _once(body)
            resp_headers = headers.response_headers(resp.headers)
            resp_headers.append(headers.cache_status(outcome))
            await send(
                {"type": "http.response.start", "status": resp.status, "headers": resp_headers}
            )
            self.stats.requests[(match.name, outcome.split(";", 1)[0])] += 1
            try:
                await relay(send, chunks)
            except UpstreamError as exc:
                self.stats.upstream_errors += 1
                raise AbortResponse(str(exc)) from exc
        finally:
            await resp.aclose()

    async def _request_body(
        self, req: ProxyRequest, receive: Receive | None
    ) -> tuple[bytes | AsyncIterator[bytes], int | None]:
        """The request body, and its length when it is known up front.

        A body with a Content-Length is streamed when large; one without is
        read (bounded) so slurmrestd always gets a Content-Length.
        """
        if receive is None:
            return b"", None
        for k, _ in req.headers:
            if k == b"content-length" or k == b"transfer-encoding":
                break
        else:
            # Neither header: HTTP/1.1 framing says there is no body (RFC 9112
            # §6.3), so skip the wait for an empty message (most GETs).
            return b"", None
        limit = self.max_body_bytes
        raw_length = req.header(b"content-length")
        if raw_length is not None:
            if not raw_length.isdigit():
                raise _BodyTooLarge  # uvicorn rejects these before us; belt and braces
            length = int(raw_length)
            if length > limit:
                raise _BodyTooLarge
            if length >= _READ_REQUEST_BELOW:
                return _stream_body(receive, length), length
        chunks = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client left (or uvicorn refused the rest of the request):
                # forwarding what arrived would send slurmrestd a cut body.
                raise _ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not body and raw_length is None:
            return b"", None
        return body, len(body)

    async def _bump(self, tags: Sequence[str]) -> None:
        self.local_writes += 1
        try:
            await self.store.bump(tags)
        except StoreError:
            self.stats.store_errors += 1  # the store logs once per episode
            return
        self.stats.invalidated(tags)


_CACHE_STATUS = {
    outcome: headers.cache_status(outcome)
    for outcome in ("fwd=request", "fwd=method", "fwd=bypass", "fwd=uri-miss")
}
"""The ``Cache-Status`` of each :func:`decide.forward_outcome`, made once."""


def upstream_headers(req: ProxyRequest, upstream_host: bytes, length: int | None) -> Headers:
    """The headers ``req`` carries upstream (a body of ``length`` bytes)."""
    return headers.upstream_request_headers(
        req.view,
        upstream_host=upstream_host,
        client=req.client,
        scheme=req.scheme,
        body_length=length,
    )


async def _small_body(resp: UpstreamResponse) -> bytes | None:
    """A write's answer whole, when :func:`policy.write_refused` may need it
    and it is small enough to be a refusal (or arrived whole with its head);
    else None: the body is left to stream, and judged as no refusal."""
    if not policy.refusal_needs_body(resp.status):
        return None
    body = resp.body_if_complete()
    if body is not None:
        return body  # in memory already (and taken: it must be relayed from here)
    length = policy.content_length(resp.headers)
    if length is None or length > policy.REFUSAL_BODY_MAX:
        return None
    return b"".join([chunk async for chunk in resp.aiter_body()])


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    """The request body ended in a disconnect, not in its last chunk."""


async def _stream_body(receive: Receive, length: int) -> AsyncIterator[bytes]:
    """Yield a request body from ASGI ``receive`` without holding it whole."""
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise UpstreamError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > length:
            raise UpstreamError("request body longer than its Content-Length")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
