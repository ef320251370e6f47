"""The operations side: what operators and monitoring see of a replica.

Everything here reads (and, for the admin purge, acts on) the proxy through
one small interface, :class:`cacheproxy.ops.report.Report`; nothing imports
the request path.  The app builds the one implementation,
:class:`cacheproxy.ops.adapter.AppReport`, the only module here that knows the
concrete store and transport classes.

==========================  ====================================================
``paths.py``                the own endpoints' URL prefixes (a leaf: the
                            request path imports it to keep its hands off them)
``report.py``               the reporting interface and the shapes it returns
``adapter.py``              the app side's implementation of it
``endpoints.py``            ``/_cacheproxy/...``: health, ready, stats, metrics,
                            the status page (``static/status.html``)
``admin.py``                ``/_cacheproxy/admin/...``: purge, detailed stats
``readiness.py``            the cached readiness verdict
``families.py``             every metric's name, meaning and source, once
``metrics.py``              Prometheus exposition, one process or several
==========================  ====================================================

Importing this package imports nothing: the request path reads
:mod:`cacheproxy.ops.paths` without paying for FastAPI or prometheus-client.
"""
