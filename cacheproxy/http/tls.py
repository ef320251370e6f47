"""TLS termination options for uvicorn.

slurmrestd speaks plain HTTP and its documentation asks for TLS in front of
it.  With ``--tls-cert`` (and ``--tls-key``) the proxy terminates TLS itself:
TLS 1.2 at minimum, TLS 1.3 whenever the client offers it (OpenSSL picks the
highest common version), and for TLS 1.2 only forward-secret AEAD suites
(Mozilla's "intermediate" list).  TLS 1.3 suites are not configurable through
``set_ciphers`` and are all strong.
"""

from __future__ import annotations

import inspect
import ssl
from collections.abc import Callable
from typing import Any

import uvicorn

from cacheproxy.settings import Settings

TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Pin the protocol floor and options on a server context."""
    ctx.minimum_version = MINIMUM_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


def ssl_context_factory(config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's hook: its own context (cert, key, ciphers), then hardened.

    Module level so ``--workers`` children can unpickle it.
    """
    return harden(default())


def server_context(cert: str, key: str | None = None) -> ssl.SSLContext:
    """The context the proxy serves with (also used by the tests to check it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key or None)
    ctx.set_ciphers(TLS12_CIPHERS)
    return harden(ctx)


def server_options(s: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``/``uvicorn.run``; {} without TLS."""
    if not s.tls_cert:
        return {}
    opts: dict[str, Any] = {
        "ssl_certfile": s.tls_cert,
        "ssl_keyfile": s.tls_key or None,
        "ssl_version": ssl.PROTOCOL_TLS_SERVER,
        "ssl_ciphers": TLS12_CIPHERS,
    }
    # Older uvicorn has no factory hook; Python's own floor is TLS 1.2 there.
    if "ssl_context_factory" in inspect.signature(uvicorn.Config).parameters:
        opts["ssl_context_factory"] = ssl_context_factory
    return opts
