"""Where the proxy's own endpoints live.

A leaf module: the request path (guard, JWT check, the dispatcher) needs these
prefixes to leave the own endpoints alone, and must not import the endpoints
themselves (that was an import circle: app -> endpoints -> app).
"""

from __future__ import annotations

OWN_PREFIX = "/_cacheproxy"
"""A prefix slurmrestd never uses."""
ADMIN_PREFIX = "/admin"
"""The admin routes, under :data:`OWN_PREFIX`."""
