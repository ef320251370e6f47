"""The one place that speaks HTTP/1.1 and ASGI: it carries out what
:mod:`cacheproxy.core` decides, against the store (:mod:`cacheproxy.store`)
and slurmrestd (:mod:`cacheproxy.upstream`).

One request, from the socket inwards:

* ``server.py``: the HTTP/1.1 server protocol uvicorn runs (the proxy's own,
  on httptools): head limits (414/431/408), pipelining, and the lane that
  writes an answer the pipeline completed whole straight to the socket;
  ``cycle.py``: one request on the wire and, where it needs one, its ASGI
  cycle; ``forwarded.py``: the client behind a trusted balancer; ``tls.py``:
  TLS options;
* ``hardening.py``: builds the pipeline, in order, from the settings; each
  step is written once and runs for every request, on the lane or not:
  ``accesslog.py`` (request id, access log, safety net), ``guard.py``
  (brute-force guard, per-user rate), ``jwtcheck.py`` (local JWT check),
  ``localauth.py`` (refusal without a token behind a unix socket);
  ``app.py``: the proxy's own endpoints or the proxied path (add a
  middleware-like step: a module here, placed in ``hardening.wrap``);
* ``proxy.py``: the proxied path: plan (core/plan.py), lookup, the decision
  (core/decide.py), and its execution;
* ``coalesce.py``: one flight per key; ``fill.py``: a miss's fetch, stored
  as the decision says; ``credentials.py``: the credential's verdict recorded
  in the store; ``forward.py``: everything the cache does not serve, and a
  write's invalidation;
* ``answer.py``, ``stale.py``, ``respond.py``: the responses, marked in
  ``Cache-Status``; ``pipeline.py``: the steps' runner and the
  per-request context (:class:`~cacheproxy.http.pipeline.Exchange`);
* ``gctune.py``: keeps the garbage collector off the request path.

Swap the upstream client: :mod:`cacheproxy.upstream` (its ``Transport``),
nothing here.
"""
