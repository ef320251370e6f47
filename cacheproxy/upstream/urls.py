"""Parse the upstream address every transport accepts.

slurmrestd listens on TCP or on a UNIX socket; the proxy is configured with
``http://host:port``, ``https://host:port`` (slurmrestd behind a TLS
terminator on another host) or ``unix:/path/to.sock``.  Parsing lives here so the
spellings accepted are decided in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    """Where slurmrestd listens: a TCP ``host``/``port`` or a UNIX ``path``."""

    host: str
    port: int
    path: str | None = None
    tls: bool = False
    """``https://``: TLS to the upstream, its certificate verified."""


def parse_upstream_url(url: str) -> UpstreamAddress:
    """``http://host[:port]`` (port 80 by default), ``https://host[:port]``
    (443) or ``unix:/path``.

    ``unix:///path`` and ``http+unix://%2Fpath`` are accepted too, because
    people copy them from other tools.  slurmrestd does not speak TLS itself;
    ``https://`` is for one behind a TLS terminator (nginx, HAProxy, stunnel).
    Raises ValueError with a one-line reason (a bad port included).
    """
    if url.startswith("http+unix://"):
        from urllib.parse import unquote

        path = unquote(url[len("http+unix://") :].split("/", 1)[0])
        return UpstreamAddress("localhost", 0, path)
    if url.startswith("unix:"):
        path = url[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            raise ValueError(f"unix upstream needs an absolute socket path: {url!r}")
        return UpstreamAddress("localhost", 0, path)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"upstream URL must be http://host:port, https://host:port or unix:/path, got {url!r}"
        )
    try:
        port = parts.port
    except ValueError as exc:  # "Port could not be cast to integer value as 'x'"
        raise ValueError(f"upstream URL {url!r}: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"upstream URL has no host: {url!r}")
    if port == 0:
        raise ValueError(f"upstream URL {url!r}: port out of range")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"upstream URL must be only scheme, host and port: {url!r}")
    tls = parts.scheme == "https"
    return UpstreamAddress(parts.hostname, port or (443 if tls else 80), tls=tls)
