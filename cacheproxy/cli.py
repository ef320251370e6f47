"""``cacheproxy`` command line: serve, check-config, simulate, bench."""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import os
import sys
from collections.abc import Sequence
from typing import Any

from cacheproxy import __version__, lifecycle
from cacheproxy.core.rules import RuleError, RuleSet
from cacheproxy.lifecycle import Source
from cacheproxy.ops import logfmt
from cacheproxy.settings import ENV_PREFIX, SETTINGS_FILE_ENV, Settings, SettingsError

WORKER_START_SECONDS = 30
"""uvicorn's ``timeout_worker_healthcheck`` (default 5 s): also how long a
hung worker answers no health ping before it is replaced."""


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the proxy",
        description="Run the caching proxy in front of slurmrestd. Every option can also be "
        f"set as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}UPSTREAM) or as <option> in the "
        "settings file. Precedence, lowest first: the defaults, the settings file, the "
        "environment, these options.",
    )
    p.add_argument(
        "--settings",
        help=f"settings file (TOML), see config/settings.example.toml [env {SETTINGS_FILE_ENV}]",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        help_text = f"{field.description or ''} [env {env}; default {field.default!r}]"
        if field.annotation is bool:
            p.add_argument(
                flag,
                dest=name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            p.add_argument(flag, dest=name, default=None, help=help_text)


def _cmd_serve(args: argparse.Namespace) -> int:
    source = Source(
        cli={name: getattr(args, name) for name in Settings.model_fields},
        settings_file=args.settings,
    )
    try:
        loaded = lifecycle.load(source)
    except (SettingsError, RuleError) as exc:
        print(f"cacheproxy: {exc}", file=sys.stderr)
        return 2
    s = loaded.settings
    log_config = logfmt.logging_config(s.log_level)
    logging.config.dictConfig(log_config)
    import uvicorn

    from cacheproxy.http import hardening
    from cacheproxy.http.app import SETTINGS_ENV

    common: dict[str, Any] = {
        "host": s.host,
        "port": s.port,
        "loop": "uvloop",
        "lifespan": "on",
        "server_header": False,
        "date_header": False,
        "log_level": s.log_level.lower(),
        "log_config": log_config,
        # the protocol, limits, TLS, proxy headers and access log (uvicorn's
        # own is off: ours redacts): hardening's, not repeated here
        **hardening.uvicorn_options(s),
    }
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc_dir:
        from cacheproxy.ops.metrics import prepare_multiproc_dir

        prepare_multiproc_dir(multiproc_dir)  # a previous run's files would be merged in
    log = logging.getLogger("cacheproxy")
    log.info("cacheproxy starting", extra={"fields": lifecycle.startup_fields(loaded)})
    if s.workers > 1:
        if not s.redis_url:
            log.warning("%d workers without --redis-url: each worker caches alone", s.workers)
        os.environ[SETTINGS_ENV] = source.to_json()
        uvicorn.run(
            "cacheproxy.http.hardening:create_app_from_env",
            factory=True,
            workers=s.workers,
            # how long a new worker may take to serve (a reload's rolling
            # restart waits for it; measured 7 s on a loaded 2-core host)
            timeout_worker_healthcheck=WORKER_START_SECONDS,
            **common,
        )
    else:
        uvicorn.run(hardening.serving(source, loaded), **common)
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    if args.settings_dry_run:
        return _check_settings(args)
    if not args.file:
        print("cacheproxy: check-config needs a rules file or --settings", file=sys.stderr)
        return 2
    try:
        rules = RuleSet.from_file(args.file)
    except RuleError as exc:
        print(f"cacheproxy: invalid rules: {exc}", file=sys.stderr)
        return 1
    from cacheproxy.http.sitescope import SiteScopes

    private = args.private_data
    if private is None:
        private = os.environ.get(ENV_PREFIX + "PRIVATE_DATA", "")
    conf = args.slurm_conf
    if conf is None:
        conf = os.environ.get(ENV_PREFIX + "SLURM_CONF", "")
    try:
        described = {
            d["route"]: d
            for d in SiteScopes(rules.rules, private_data=private, slurm_conf=conf).describe()
        }
    except ValueError as exc:
        print(f"cacheproxy: private_data: {exc}", file=sys.stderr)
        return 1
    out = []
    for rule in rules.rules:
        desc = rule.describe()
        scoped = described.get(rule.name)
        if scoped is not None:
            desc["scope"], desc["scope_why"] = scoped["scope"], scoped["why"]
        out.append(desc)
    print(json.dumps(out, indent=2))
    for d in described.values():
        print(f"{d['route']:<18} {d['scope']:<7} {d['why']}", file=sys.stderr)
    print(f"{args.file}: {len(rules.rules)} rules OK", file=sys.stderr)
    return 0


def _check_settings(args: argparse.Namespace) -> int:
    """``check-config --settings [FILE]``: everything ``serve`` would check
    at start (settings from every source, rules, files), nothing started;
    prints the effective settings (secrets masked) and the startup line."""
    settings_file = args.settings_dry_run if args.settings_dry_run != "-" else None
    cli = {"config": args.file} if args.file else {}
    try:
        loaded = lifecycle.load(Source(cli=cli, settings_file=settings_file))
    except (SettingsError, RuleError) as exc:
        print(f"cacheproxy: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(loaded.settings.public(), indent=2))
    print(json.dumps(lifecycle.startup_fields(loaded)), file=sys.stderr)
    print("settings OK", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # simulate and bench own their options: hand them the rest untouched.
    if argv and argv[0] == "simulate":
        from cacheproxy.simulator.cli import main as simulate_main

        return int(simulate_main(argv[1:]))
    if argv and argv[0] == "bench":
        from cacheproxy.bench.cli import main as bench_main

        return int(bench_main(argv[1:]))
    parser = argparse.ArgumentParser(
        prog="cacheproxy", description="A caching read-through proxy for slurmrestd."
    )
    parser.add_argument("--version", action="version", version=f"cacheproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    c = sub.add_parser(
        "check-config",
        help="validate a rules file and print the effective rules; with --settings, "
        "everything serve checks at start",
    )
    c.add_argument("file", nargs="?", help="rules file (TOML)")
    c.add_argument(
        "--settings",
        dest="settings_dry_run",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="dry run of serve's start: the settings (this file, or "
        f"{SETTINGS_FILE_ENV}, and the environment), the rules and every file they name",
    )
    c.add_argument(
        "--private-data",
        default=None,
        help="the site's PrivateData words, to print each route's scope "
        f"[env {ENV_PREFIX}PRIVATE_DATA]",
    )
    c.add_argument(
        "--slurm-conf",
        default=None,
        help=f"read PrivateData from this slurm.conf [env {ENV_PREFIX}SLURM_CONF]",
    )
    sub.add_parser("simulate", help="run the slurmrestd simulator (see: simulate --help)")
    sub.add_parser("bench", help="run the benchmark (see: bench --help)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _cmd_serve(args)
    if args.command == "check-config":
        return _cmd_check_config(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
