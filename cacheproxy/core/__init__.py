"""The cache's reasoning, pure: no I/O, no ASGI, no sockets, no clock of its own.

Everything here is a function of its arguments (the time included, passed in),
so each decision is tested on its own, state by state.  The data flow of one
request, and where each step's *decision* lives:

* ``request.py``: the target as slurmrestd parses it (path segments, the
  canonical query); ``headers.py``: the headers as forwarded (one scan);
* ``identity.py``: who is asking (a keyed hash of the credential);
* ``rules.py`` (+ ``default_rules.toml``): which rule matches, its TTL, tags,
  what a write invalidates (add a cacheable endpoint, or change what a job
  cancel invalidates: ``default_rules.toml``);
* ``keys.py``, ``usertag.py``, ``memo.py``: the cache key, a user's tag, the
  byte-bounded memos;
* ``plan.py``: all of the above for one GET, from one scan of its head;
* ``decide.py``: the state machine: given the plan, the store's lookup and the
  clock, what to do (fresh hit, stale-while-revalidate, revalidate, fetch or
  join a flight, forward, refuse); given upstream's answer, whether to store
  it, the credential's verdict, what a write invalidates;
* ``policy.py``: the small predicates those decisions are made of (is this
  body storable, did slurmrestd refuse the credential...);
* ``compress.py``, ``errors.py``: stored variants, slurmrestd's error shape.

The mechanism that carries out the decisions is :mod:`cacheproxy.http`.
"""
