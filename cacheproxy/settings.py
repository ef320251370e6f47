"""Settings: defaults, a TOML settings file, environment, command line.

Precedence, lowest first: the defaults below, the settings file
(``--settings FILE``), ``CACHEPROXY_<NAME>`` environment variables, then
command-line options.  Every option is settable each way.
"""

from __future__ import annotations

import dataclasses
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
    redis_url: str = _opt("", "shared tier: redis://, rediss:// or unix:// URL")
    redis_prefix: str = _opt("cacheproxy:v1:", "prefix of every Redis key")
    redis_timeout: float = _opt(0.05, "seconds before a Redis call counts as failed")
    local_tier: bool = _opt(True, "with Redis: keep hot entries in-process too")
    hmac_key: str = _opt(
        "",
        "secret for hashing credentials; replicas sharing Redis need the same one "
        "(default: random per process, or derived from the Redis URL)",
        secret=True,
    )
    workers: int = _opt(1, "uvicorn worker processes")
    log_level: str = _opt("info", "log level")
    access_log: bool = _opt(False, "log every request (never tokens)")

    def public(self) -> dict[str, Any]:
        """Settings safe to print or log (secrets masked)."""
        out = dataclasses.asdict(self)
        for f in fields(self):
            if f.metadata.get("secret") and out[f.name]:
                out[f.name] = "***"
        return out


class SettingsError(ValueError):
    pass


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
    if s.max_entry_bytes > s.max_bytes:
        raise SettingsError("max_entry_bytes cannot exceed max_bytes")
    if s.workers > 1 and not s.redis_url:
        # Allowed, but every worker then caches alone: see the README.
        pass
