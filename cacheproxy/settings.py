"""Settings: defaults, a TOML settings file, environment, command line.

Precedence, lowest first: the defaults below, the settings file
(``--settings FILE`` or ``CACHEPROXY_SETTINGS``), ``CACHEPROXY_<NAME>``
environment variables, then command-line options.  Every option is settable
each way, under the same name (dashes for underscores on the command line
and, if you like, in the file).

:class:`Settings` is a pydantic-settings model: typed, frozen, and built
from exactly the values given (``Settings(port=1)`` reads no environment).
:func:`load` reads the sources, pydantic-settings' TOML source for the file
and :class:`EnvironmentSource` for the environment, merges them in that
order and validates once; every error is a one-line :class:`SettingsError`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "CACHEPROXY_"
SETTINGS_FILE_ENV = ENV_PREFIX + "SETTINGS"
"""The settings file, when ``--settings`` does not name one."""

DEFAULT_PORT = 6821
"""Next to slurmrestd's customary 6820."""


def _opt(default: Any, help: str, *, secret: bool = False) -> Any:
    return Field(default, description=help, json_schema_extra={"secret": True} if secret else None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        coerce_numbers_to_str=True,
        validate_default=False,
    )

    upstream: str = _opt(
        "", "slurmrestd URL: http://host:port, https://host:port or unix:/path/to.sock"
    )
    upstream_ca_file: str = _opt(
        "",
        "CA certificates (PEM) an https:// upstream's certificate is verified against "
        "(default: the system's); verification is always on",
    )
    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(DEFAULT_PORT, "port to listen on")
    config: str = _opt("", "rules file (TOML); default: the built-in rules")
    # Sized from the simulator's /jobs at 10,000 jobs (v0.0.45: 167.5 MiB,
    # docs/OPERATIONS.md "Memory budget"): the largest list stays cacheable,
    # and the bound holds several such entries.
    max_bytes: int = _opt(1024 * 1024 * 1024, "in-process cache bound, bytes")
    max_entry_bytes: int = _opt(256 * 1024 * 1024, "largest response stored, bytes")
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
    # -- shared views (docs/scopes.md) ----------------------------------------
    private_data: str = _opt(
        "",
        "the site's PrivateData: the words of slurm.conf's and slurmdbd.conf's, comma-separated "
        "(their union), or none; routes no word hides are cached once for every accepted user "
        "(empty, with no --slurm-conf: every route per user)",
    )
    slurm_conf: str = _opt(
        "", "read slurm.conf's PrivateData from this file, at start and when it changes"
    )
    shared_audit_rate: float = _opt(
        0.1,
        "fraction of a shared route's fills audited: another user's view fetched too and "
        "compared; a difference seen twice turns the route per user (0: no audit)",
    )
    shared_audit_window: float = _opt(
        1.0, "seconds after a fill within which another user's fetch pairs with it (audit)"
    )
    upstream_concurrency: int = _opt(
        16, "requests in flight to slurmrestd at once (below its 20 threads, 124 connections)"
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values given: the file and the environment are read by
        :func:`load`, once, not whenever a ``Settings`` is made (tests, the
        worker hand-over)."""
        return (init_settings,)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_bool_int(cls, value: Any, info: ValidationInfo) -> Any:
        """Booleans as before: ``1/true/yes/on``, ``0/false/no/off`` or empty;
        never a boolean where a number is expected."""
        field = cls.model_fields[str(info.field_name)]
        if field.annotation in (bool, "bool") and isinstance(value, str):
            text = value.strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("not a boolean")
        if field.annotation in (int, float, "int", "float"):
            if isinstance(value, bool):
                raise ValueError("not a number")
            if isinstance(value, str):
                return value.strip()
        return value

    def public(self) -> dict[str, Any]:
        """Settings safe to print or log (secrets masked)."""
        out = self.model_dump()
        for name, field in type(self).model_fields.items():
            if is_secret(field) and out[name]:
                out[name] = "***"
        return out


def is_secret(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("secret"))


class SettingsError(ValueError):
    pass


class EnvironmentSource(PydanticBaseSettingsSource):
    """``CACHEPROXY_<NAME>`` variables of ``environ`` (the process's
    environment unless told otherwise), as strings for validation."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        key = ENV_PREFIX + field_name.upper()
        return self._environ.get(key), key, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                out[name] = value
        return out


def file_values(path: str) -> dict[str, Any]:
    """The settings file's values, keys as field names (dashes allowed)."""
    if not Path(path).is_file():
        raise SettingsError(f"{path}: no such file")
    try:
        raw = TomlConfigSettingsSource(Settings, toml_file=Path(path))()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in Settings.model_fields:
            raise SettingsError(f"{path}: unknown setting {key!r}")
        out[name] = value
    return out


def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    name = ".".join(str(part) for part in first["loc"]) or "settings"
    if first["type"] == "extra_forbidden":
        return f"unknown setting {name!r}"
    return f"{name}: invalid value {first.get('input')!r}"


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


def load(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    settings_file: str | None = None,
) -> Settings:
    """Merge every source into one validated :class:`Settings`: the file,
    then the environment, then ``cli`` (options left ``None`` are not given)."""
    env = os.environ if env is None else env
    path = settings_file or env.get(SETTINGS_FILE_ENV)
    values: dict[str, Any] = file_values(path) if path else {}
    values.update(EnvironmentSource(Settings, env)())
    values.update(
        {k: v for k, v in (cli or {}).items() if v is not None and k in Settings.model_fields}
    )
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None
    validate(settings)
    return settings


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def check_upstream(url: str) -> None:
    """The upstream URL, checked whole at start (a bad port or a missing host
    would otherwise fail at the first request)."""
    from cacheproxy.upstream.urls import parse_upstream_url

    if not url.startswith(("http://", "https://", "unix:")):
        raise SettingsError(
            f"upstream must be http://host:port, https://host:port or unix:/path, not {url!r}"
        )
    try:
        parse_upstream_url(url)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def validate(s: Settings) -> None:
    if s.upstream:
        check_upstream(s.upstream)
    if s.upstream_ca_file and not s.upstream.startswith("https://"):
        raise SettingsError("upstream_ca_file needs an https:// upstream")
    if s.log_level.lower() not in LOG_LEVELS:
        raise SettingsError(
            f"log_level must be one of {', '.join(LOG_LEVELS)}, not {s.log_level!r}"
        )
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
        "shared_audit_window",
    ):
        if getattr(s, name) < 0:
            raise SettingsError(f"{name} must be >= 0")
    if not 0 <= s.shared_audit_rate <= 1:
        raise SettingsError("shared_audit_rate must be between 0 and 1")
    trusted_proxies(s.forwarded_allow_ips)
    _check_private_data(s)
    if s.tls_key and not s.tls_cert:
        raise SettingsError("tls_key needs tls_cert")
    if s.workers > 1 and not s.redis_url:
        # Allowed, but every worker then caches alone: see the README.
        pass


def _check_private_data(s: Settings) -> None:
    from cacheproxy.core import privatedata

    try:
        privatedata.parse(s.private_data)
    except ValueError as exc:
        raise SettingsError(f"private_data: {exc}") from None
    if s.slurm_conf:
        try:
            with open(s.slurm_conf, encoding="utf-8", errors="replace") as f:
                privatedata.parse(privatedata.slurm_conf_value(f.read()) or "")
        except OSError as exc:
            raise SettingsError(f"slurm_conf: {s.slurm_conf}: {exc.strerror}") from None
        except ValueError as exc:
            raise SettingsError(f"slurm_conf: {s.slurm_conf}: PrivateData: {exc}") from None
