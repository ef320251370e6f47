"""The client behind a trusted balancer: ``X-Forwarded-For`` and
``X-Forwarded-Proto``, believed only from the configured addresses.

Behind HAProxy every connection comes from the balancer; the brute-force
guard, the per-user rate and the access log need the client it forwards for.
The server protocol (:mod:`cacheproxy.http.server`) rewrites a request's
``client`` and ``scheme`` with :meth:`TrustedProxies.rewrite` before anything
reads them, so every step sees the same client whichever way the request is
answered.  The rules are those uvicorn's proxy-headers middleware applies
(the proxy used it before it owned its server protocol), so nothing changes
for a deployment: a peer in ``forwarded_allow_ips`` (addresses, networks, or
``*``) is believed; the client is the right-most address of the
``X-Forwarded-For`` chain that is not itself a trusted proxy (each proxy
appends the address it saw), or the left-most when all are trusted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, MutableMapping
from typing import Any

_CACHED = 1024
"""Peer addresses whose verdict is remembered (a balancer is a few)."""


class TrustedProxies:
    """The balancers whose forwarding headers are believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        entries = [e.strip() for e in entries if e.strip()]
        self.everyone = entries == ["*"]
        self.addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in [] if self.everyone else entries:
            # (settings.trusted_proxies has rejected anything else)
            if "/" in entry:
                self.networks.append(ipaddress.ip_network(entry))
            else:
                self.addresses.add(ipaddress.ip_address(entry))
        self._verdicts: dict[str, bool] = {}

    def trusts(self, host: str) -> bool:
        if self.everyone:
            return True
        verdict = self._verdicts.get(host)
        if verdict is None:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                verdict = False  # not an address (a unix socket, a name): never a balancer
            else:
                verdict = ip in self.addresses or any(ip in net for net in self.networks)
            if len(self._verdicts) >= _CACHED:
                self._verdicts.clear()
            self._verdicts[host] = verdict
        return verdict

    def rewrite(self, scope: MutableMapping[str, Any]) -> None:
        """Set ``scope``'s client and scheme from a trusted peer's headers
        (in place; a request from any other peer is left as it is)."""
        peer = scope["client"]
        if peer is None or not self.trusts(peer[0]):
            return
        proto: bytes | None = None
        chain: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-proto":
                proto = value
            elif name == b"x-forwarded-for":
                chain.append(value)
        if proto is not None:
            scheme = proto.decode("latin-1").strip()
            if scheme in ("http", "https"):
                scope["scheme"] = scheme
        if chain:
            host, port = self.client_of(b", ".join(chain).decode("latin-1"))
            if host:  # an empty header names nobody: the peer stays the client
                scope["client"] = (host, port)

    def client_of(self, forwarded_for: str) -> tuple[str, int]:
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        if not self.everyone:
            for hop in reversed(hops):
                host, port = _host_port(hop)
                if not self.trusts(host):
                    return host, port
        return _host_port(hops[0])  # every hop is a trusted proxy


def _host_port(hop: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``; anything else is a host
    without a port, kept as written (so it matches no trusted address)."""
    if hop.startswith("["):
        end = hop.find("]")
        if end == -1:
            return hop, 0
        host, rest = hop[1:end], hop[end + 1 :]
        if not rest:
            return host, 0
        if not rest.startswith(":"):
            return hop, 0
        return host, _port(rest[1:])
    if hop.count(":") == 1:
        host, _, port = hop.partition(":")
        return (host, _port(port)) if port.isdigit() else (hop, 0)
    return hop, 0


def _port(text: str) -> int:
    return int(text) if text.isdigit() else 0
