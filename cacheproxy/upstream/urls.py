"""Parse the upstream address every transport accepts.

slurmrestd listens on TCP or on a UNIX socket; the proxy is configured with
``http://host:port`` or ``unix:/path/to.sock``.  Parsing lives here so the
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


def parse_upstream_url(url: str) -> UpstreamAddress:
    """``http://host[:port]`` (port 80 by default) or ``unix:/path``.

    ``unix:///path`` and ``http+unix://%2Fpath`` are accepted too, because
    people copy them from other tools.  HTTPS is refused: slurmrestd does not
    speak TLS itself, and a silent downgrade would be worse than an error.
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
    if parts.scheme != "http":
        raise ValueError(f"upstream URL must be http://host:port or unix:/path, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"upstream URL has no host: {url!r}")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"upstream URL must not have a path or query: {url!r}")
    return UpstreamAddress(parts.hostname, parts.port or 80)
