"""cacheproxy: a caching read-through HTTP proxy for Slurm's REST daemon.

The data flow of one proxied request, module by module::

    request.py      ASGI scope -> ProxyRequest (canonical path, sorted query)
    identity.py     who is asking, and is that exact credential accepted?
    rules.py        which rule matches: cache it, pass it, or invalidate tags
    keys.py         the cache key: unambiguous, per user
    policy.py       side-effect-free decisions: fresh? storable?
    store/          where entries, tag generations and acceptances live
    coalesce.py     one upstream fetch for many identical GETs
    upstream/       the HTTP client to slurmrestd (one method: send)
    proxy.py        the ASGI app that wires the above together
    app.py          the proxy plus its own endpoints under /_cacheproxy/
"""

__version__ = "0.1.0"
