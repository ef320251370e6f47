"""A container's liveness probe: ``python -m cacheproxy.healthcheck``.

It reads the same settings as ``cacheproxy serve`` (settings file, then
``CACHEPROXY_*`` variables), so it asks the port the server listens on and
speaks TLS exactly when the server does: a probe of plain http against a TLS
listener fails, and the container is marked unhealthy while it serves well.

The probe asks ``/_cacheproxy/health``, which answers 200 while Redis is
away too (the proxy then serves from slurmrestd).  The certificate is not
checked: the probe talks to its own process over loopback, where the
certificate's names (the service's public ones) never match, and the
question is only whether the server answers.

Exit status: 0 when the server answered 200, 1 otherwise (one line on stderr).
"""

from __future__ import annotations

import http.client
import ssl
import sys

from cacheproxy import settings as settings_mod

PATH = "/_cacheproxy/health"
TIMEOUT = 2.0
"""Seconds; below Docker's HEALTHCHECK --timeout, so the probe reports
its own error rather than being killed."""
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def probe(host: str, port: int, tls: bool, timeout: float = TIMEOUT) -> int:
    """The status ``GET /_cacheproxy/health`` gets from ``host:port``."""
    conn: http.client.HTTPConnection
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", PATH)
        return conn.getresponse().status
    finally:
        conn.close()


def main() -> int:
    try:
        s = settings_mod.load()
    except settings_mod.SettingsError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    # A server listening on every address answers on loopback.
    host = "127.0.0.1" if s.host in _WILDCARDS else s.host.strip("[]")
    try:
        status = probe(host, s.port, tls=bool(s.tls_cert))
    except (OSError, http.client.HTTPException) as exc:
        print(f"healthcheck: {host}:{s.port}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: {PATH} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
