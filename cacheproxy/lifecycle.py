"""Start and reload: everything read from files, checked before it is used.

At start, ``cacheproxy serve`` (and ``check-config --settings``) call
:func:`load`: the settings from every source, the rules file, and every file
the settings name (TLS, JWT keys, the upstream's CA), each problem one line
(:class:`~cacheproxy.settings.SettingsError` or
:class:`~cacheproxy.core.rules.RuleError`) instead of a traceback later.

**Reload (SIGHUP).**  A process serving requests handles SIGHUP by reading
the same sources again (:class:`Reloader`).  If anything is wrong, the
running rules and settings stay and one line says why.  Otherwise the new
rules take effect for the next request, and so do the settings in
:data:`LIVE`; any other setting that changed is named in the log line as
needing a restart (they shape sockets, pools and stores built at start).

With ``--workers N`` the process systemd knows (``$MAINPID``) is uvicorn's
supervisor, and uvicorn answers SIGHUP there with a rolling restart: each
worker is replaced by a new one, which reads the sources again through this
same :func:`load`, and the old one is retired only once the new one serves.
A new worker that finds a bad file logs the one line and exits before
serving, and uvicorn keeps the running workers.  Each worker also handles a
SIGHUP of its own (in place, as a single process does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cacheproxy import __version__
from cacheproxy import settings as settings_mod
from cacheproxy.core.rules import RuleError, RuleSet
from cacheproxy.ops.describe import redact_url, tiers
from cacheproxy.settings import ENV_PREFIX, Settings, SettingsError

log = logging.getLogger("cacheproxy")

LIVE = ("config", "log_level", "access_log", "private_data", "slurm_conf")
"""Settings a reload applies to the running process: the rules file, the log
level, the access log, and the site's ``PrivateData`` (what an admin
corrects after the audit's alarm, docs/scopes.md)."""


@dataclass(frozen=True)
class Source:
    """Where the settings come from, to be read again on a reload: the
    options given on the command line and the settings file (the
    environment is the process's own)."""

    cli: Mapping[str, Any] = field(default_factory=dict)
    settings_file: str | None = None

    def to_json(self) -> str:
        """For the ``--workers`` processes (they inherit the environment)."""
        given = {k: v for k, v in self.cli.items() if v is not None}
        return json.dumps({"cli": given, "settings_file": self.settings_file})

    @classmethod
    def from_json(cls, raw: str) -> Source:
        data = json.loads(raw)
        return cls(cli=data["cli"], settings_file=data["settings_file"])


@dataclass(frozen=True)
class Loaded:
    settings: Settings
    rules: RuleSet


def load(source: Source) -> Loaded:
    """The settings and rules, every file they name checked (one-line errors)."""
    s = settings_mod.load(cli=source.cli, settings_file=source.settings_file)
    if not s.upstream:
        raise SettingsError(f"--upstream (or {ENV_PREFIX}UPSTREAM) is required")
    rules = RuleSet.from_file(s.config) if s.config else RuleSet.default()
    check_files(s)
    return Loaded(s, rules)


def startup_fields(loaded: Loaded) -> dict[str, Any]:
    """The startup line's fields: what an admin checks first in the log."""
    s = loaded.settings
    fields: dict[str, Any] = {
        "event": "start",
        "version": __version__,
        "listen": f"{'https' if s.tls_cert else 'http'}://{s.host}:{s.port}",
        "upstream": redact_url(s.upstream),
        "tiers": tiers(s.redis_url, s.local_tier),
        "rules": len(loaded.rules.rules),
        "rules_file": s.config or "built-in",
        "workers": s.workers,
        "jwt_check": "hs256" if s.jwt_key else "jwks" if s.jwks_file else "off",
    }
    fields["scopes"] = scope_summary(loaded)
    return fields


def scope_summary(loaded: Loaded) -> dict[str, object]:
    """The routes' scopes under the site's ``PrivateData`` (docs/scopes.md):
    how many cached routes are shared and per user, and the words from the
    ``private_data`` setting and from slurm.conf (None: not given)."""
    from cacheproxy.http.sitescope import SiteScopes

    s = loaded.settings
    scopes = SiteScopes(loaded.rules.rules, private_data=s.private_data, slurm_conf=s.slurm_conf)
    summary = scopes.summary()
    del summary["demoted"]  # (none at start)
    return summary


def check_files(s: Settings) -> None:
    """Fail at start, with the file's name, on unusable TLS, CA or JWT key files."""
    import ssl

    from cacheproxy.http import tls
    from cacheproxy.http.jwtcheck import JwtConfigError, load_hs256_key, load_jwks

    for name in ("tls_cert", "tls_key", "upstream_ca_file", "jwt_key", "jwks_file"):
        readable(name, getattr(s, name))
    if s.tls_cert:
        try:
            tls.server_context(s.tls_cert, s.tls_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"tls_cert/tls_key: {_why(exc)}") from None
    if s.upstream_ca_file:
        try:
            ssl.create_default_context(cafile=s.upstream_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"upstream_ca_file: {_why(exc)}") from None
    try:
        if s.jwt_key:
            load_hs256_key(s.jwt_key)
        if s.jwks_file:
            load_jwks(s.jwks_file)
    except JwtConfigError as exc:
        raise SettingsError(str(exc)) from None


def readable(name: str, path: str) -> None:
    """The file a setting names can be read by this process (else: which
    setting, which file, why)."""
    if not path:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from None


def _why(exc: OSError | Exception) -> str:
    """An OS error with its file name (``[Errno 2] No such file or directory:
    '/x'``); an SSL error as it reads."""
    if isinstance(exc, OSError) and exc.filename is None and exc.strerror:
        return str(exc.strerror)
    return str(exc)


def changed(old: Settings, new: Settings) -> list[str]:
    """Names of the settings that differ."""
    a, b = old.model_dump(), new.model_dump()
    return [name for name in a if a[name] != b[name]]


class Reloader:
    """Reads the sources again on SIGHUP and applies what may change live.

    ``apply(settings, rules)`` puts the new rules and the live settings in
    place (see :func:`cacheproxy.http.hardening.reload_into`)."""

    def __init__(self, source: Source, current: Settings, apply: Any) -> None:
        self.source = source
        self.current = current
        self._apply = apply

    def install(self) -> None:
        """Handle SIGHUP on the running event loop (the serving process only)."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> bool:
        """Read and apply; False (and one logged line) when refused."""
        try:
            loaded = load(self.source)
        except (SettingsError, RuleError) as exc:
            log.error("reload refused, the running rules and settings stay: %s", exc)
            return False
        new = loaded.settings
        differ = changed(self.current, new)
        live = {name: getattr(new, name) for name in LIVE}
        applied = self.current.model_copy(update=live)
        self._apply(applied, loaded.rules)
        self.current = applied
        restart = [name for name in differ if name not in LIVE]
        log.info(
            "reloaded: %d rules from %s; %s",
            len(loaded.rules.rules),
            new.config or "the built-in rules",
            "needs a restart to change: " + ", ".join(restart) if restart else "all applied",
            extra={"fields": {"event": "reload", "rules": len(loaded.rules.rules)}},
        )
        return True
