"""Settings: defaults, a TOML settings file, environment, command line.

Precedence, lowest first: the defaults below, the settings file
(``--settings FILE``), ``CACHEPROXY_<NAME>`` environment variables, then
command-line options.  Every option is settable each way.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "CACHEPROXY_"

DEFAULT_PORT = 6821
"""Next to slurmrestd's customary 6820."""


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class Settings:
    upstream: str = _opt("", "slurmrestd URL: http://host:port or unix:/path/to.sock")
    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(DEFAULT_PORT, "port to listen on")
    config: str = _opt("", "rules file (TOML); default: the built-in rules")
    max_bytes: int = _opt(256 * 1024 * 1024, "in-process cache bound, bytes")
    max_entry_bytes: int = _opt(32 * 1024 * 1024, "largest response stored, bytes")
    max_body_bytes: int = _opt(16 * 1024 * 1024, "largest request body accepted, bytes")
    auth_ttl: float = _opt(60.0, "seconds an accepted credential is trusted (never past exp)")
    connect_timeout: float = _opt(5.0, "seconds to connect to slurmrestd")
    read_timeout: float = _opt(120.0, "seconds to wait for slurmrestd's answer")
    upstream_connections: int = _opt(64, "pooled connections to slurmrestd")
    upstream_client: str = _opt(
        "auto", "HTTP client to slurmrestd: auto (the lean h1 client), h1 or aiohttp"
    )
    redis_url: str = _opt("", "shared tier: redis://, rediss:// or unix:// URL")
    redis_prefix: str = _opt("cacheproxy:v1:", "prefix of every Redis key")
    redis_timeout: float = _opt(0.1, "seconds before a Redis call counts as failed")
    local_tier: bool = _opt(True, "with Redis: keep hot entries in-process too")
    hmac_key: str = _opt(
        "",
        "secret for hashing credentials; replicas sharing Redis need the same one "
        "(default: random per process, or derived from the Redis URL)",
        secret=True,
    )
    admin_token: str = _opt(
        "",
        "bearer token of the admin API under /_cacheproxy/admin/ (off when empty); "
        "prefer the environment or the settings file to the command line",
        secret=True,
    )
    workers: int = _opt(1, "uvicorn worker processes")
    log_level: str = _opt("info", "log level")
    access_log: bool = _opt(False, "log every request (never tokens)")
    forwarded_allow_ips: str = _opt(
        "",
        "addresses or networks (comma-separated, e.g. 10.0.0.10,10.0.1.0/24) of the load "
        "balancers whose X-Forwarded-For/-Proto are believed; empty: none, every client is "
        "its socket's address; '*' trusts anyone (never on a reachable port)",
    )
    unix_upstream_jwt_only: bool = _opt(
        False,
        "the slurmrestd behind a unix: upstream authenticates by JWT only (no "
        "rest_auth/local): forward requests that carry no token (default: refuse them with "
        "401, since rest_auth/local would run them as the proxy's own user)",
    )
    # -- hardening (docs/hardening.md) --------------------------------------
    tls_cert: str = _opt("", "serve HTTPS with this certificate chain (PEM); TLS 1.2 minimum")
    tls_key: str = _opt("", "private key of --tls-cert (PEM), if not in the same file")
    auth_fail_limit: int = _opt(
        30, "authentication failures per client address or user name before 429 (0: off)"
    )
    auth_fail_window: float = _opt(60.0, "seconds over which authentication failures count")
    auth_fail_cooldown: float = _opt(120.0, "seconds a client or user name is refused (429)")
    user_rate: float = _opt(0.0, "requests per second per user name (token bucket; 0: off)")
    user_burst: int = _opt(20, "burst size of the per-user rate limit")
    jwt_key: str = _opt("", "verify tokens locally with this HS256 key file (jwt_hs256.key)")
    jwks_file: str = _opt("", "verify tokens locally with the RS256 keys in this JWKS file")
    jwt_leeway: float = _opt(5.0, "seconds of clock skew allowed on a token's exp")
    upstream_concurrency: int = _opt(
        16, "requests in flight to slurmrestd at once (its default thread count)"
    )
    upstream_queue: int = _opt(128, "requests waiting for an upstream slot before 503")
    upstream_queue_timeout: float = _opt(10.0, "seconds a request waits for an upstream slot")
    breaker_failures: int = _opt(
        5, "consecutive upstream failures that open the circuit breaker (0: off)"
    )
    breaker_cooldown: float = _opt(5.0, "seconds the breaker fails fast before probing")
    max_url_bytes: int = _opt(8192, "longest request target accepted (414 above)")
    max_header_bytes: int = _opt(32768, "largest request head accepted (431 above)")
    header_timeout: float = _opt(10.0, "seconds a client has to send a request head (408)")
    keep_alive_timeout: int = _opt(5, "seconds an idle client connection is kept open")
    max_connections: int = _opt(1000, "open client connections/requests before 503 (0: no limit)")

    def public(self) -> dict[str, Any]:
        """Settings safe to print or log (secrets masked)."""
        out = dataclasses.asdict(self)
        for f in fields(self):
            if f.metadata.get("secret") and out[f.name]:
                out[f.name] = "***"
        return out


class SettingsError(ValueError):
    pass


def trusted_proxies(value: str) -> list[str]:
    """The entries of ``forwarded_allow_ips``, each checked.

    Why checked here: uvicorn silently keeps an entry that is neither an
    address nor a network as a literal that never matches, so a typo would
    quietly turn the balancer's addresses back into one shared client.
    """
    entries = [e.strip() for e in value.split(",") if e.strip()]
    if entries == ["*"]:
        return entries
    for entry in entries:
        try:
            if "/" in entry:
                ipaddress.ip_network(entry)
            else:
                ipaddress.ip_address(entry)
        except ValueError:
            raise SettingsError(
                f"forwarded_allow_ips: {entry!r} is not an address, a network or '*' alone"
            ) from None
    return entries


def _coerce(name: str, typ: Any, value: Any) -> Any:
    try:
        if typ in (bool, "bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if typ in (int, "int"):
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if typ in (float, "float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}: invalid value {value!r}") from None


def load(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    settings_file: str | None = None,
) -> Settings:
    """Merge every source into one validated :class:`Settings`."""
    env = os.environ if env is None else env
    cli = cli or {}
    values: dict[str, Any] = {}
    path = settings_file or env.get(ENV_PREFIX + "SETTINGS")
    known = {f.name: f for f in fields(Settings)}
    if path:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"{path}: {exc}") from None
        for k, v in doc.items():
            name = k.replace("-", "_")
            if name not in known:
                raise SettingsError(f"{path}: unknown setting {k!r}")
            values[name] = v
    for name in known:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    for name, v in cli.items():
        if v is not None and name in known:
            values[name] = v
    coerced = {n: _coerce(n, known[n].type, v) for n, v in values.items()}
    settings = Settings(**coerced)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    if s.upstream and not (
        s.upstream.startswith(("http://", "unix:")) and len(s.upstream) > len("unix:")
    ):
        raise SettingsError(f"upstream must be http://host:port or unix:/path, not {s.upstream!r}")
    if not 0 < s.port < 65536:
        raise SettingsError(f"port out of range: {s.port}")
    for name in (
        "max_bytes",
        "max_entry_bytes",
        "max_body_bytes",
        "workers",
        "upstream_connections",
    ):
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name} must be > 0")
    if s.upstream_client not in ("auto", "h1", "aiohttp"):
        raise SettingsError(
            f"upstream_client must be auto, h1 or aiohttp, not {s.upstream_client!r}"
        )
    if s.max_entry_bytes > s.max_bytes:
        raise SettingsError("max_entry_bytes cannot exceed max_bytes")
    for name in (
        "upstream_concurrency",
        "max_url_bytes",
        "max_header_bytes",
        "keep_alive_timeout",
        "user_burst",
    ):
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name} must be > 0")
    for name in (
        "auth_fail_limit",
        "auth_fail_window",
        "auth_fail_cooldown",
        "user_rate",
        "jwt_leeway",
        "upstream_queue",
        "upstream_queue_timeout",
        "breaker_failures",
        "breaker_cooldown",
        "header_timeout",
        "max_connections",
    ):
        if getattr(s, name) < 0:
            raise SettingsError(f"{name} must be >= 0")
    trusted_proxies(s.forwarded_allow_ips)
    if s.tls_key and not s.tls_cert:
        raise SettingsError("tls_key needs tls_cert")
    if s.workers > 1 and not s.redis_url:
        # Allowed, but every worker then caches alone: see the README.
        pass
