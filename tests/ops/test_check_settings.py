"""Every bad setting is one line on stderr and exit status 2, from ``serve``
and from ``check-config --settings`` (the dry run), before anything starts:
the upstream URL whole, the log level, and every file a setting names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trustme

from cacheproxy.cli import main

NOTHING = "http://127.0.0.1:9"  # never connected to: nothing starts


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CACHEPROXY_"):
            monkeypatch.delenv(name)


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--log-level", "loud"], "log_level must be one of"),
        (["--upstream", "http://"], "no host"),
        (["--upstream", "http://h:notaport"], "notaport"),
        (["--upstream", "http://h:70000"], "out of range"),
        (["--upstream", "ftp://h"], "upstream must be"),
        (["--upstream", "https://h/slurm"], "only scheme, host and port"),
        (["--upstream", "unix:relative.sock"], "absolute socket path"),
        (["--tls-cert", "/nonexistent/chain.pem"], "/nonexistent/chain.pem"),
        (["--jwt-key", "/nonexistent/jwt_hs256.key"], "/nonexistent/jwt_hs256.key"),
        (["--config", "/nonexistent/rules.toml"], "/nonexistent/rules.toml"),
        (["--port", "eighty"], "port: invalid value 'eighty'"),
        (["--workers", "0"], "workers must be > 0"),
    ],
)
def test_serve_says_what_is_wrong_in_one_line(
    capsys: pytest.CaptureFixture[str], options: list[str], expected: str
) -> None:
    argv = ["serve", "--upstream", NOTHING, *options]
    assert expected in one_line_error(capsys, argv)


def test_missing_ca_file_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "serve",
        "--upstream",
        "https://127.0.0.1:9",
        "--upstream-ca-file",
        "/nonexistent/ca.pem",
    ]
    line = one_line_error(capsys, argv)
    assert line.startswith("cacheproxy: upstream_ca_file:")
    assert "/nonexistent/ca.pem" in line


def test_tls_key_missing_names_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cert = trustme.CA().issue_cert("127.0.0.1")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    argv = ["serve", "--upstream", NOTHING, "--tls-cert", str(chain), "--tls-key", "/nope/key.pem"]
    assert "/nope/key.pem" in one_line_error(capsys, argv)


def test_check_config_settings_is_the_same_dry_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "settings.toml"
    good.write_text(
        f'upstream = "{NOTHING}"\nlog_level = "warning"\nhmac_key = "sekrit-sekrit"\n'
        'redis_url = "redis://:pw@127.0.0.1:6379/0"\n'
    )
    assert main(["check-config", "--settings", str(good)]) == 0
    out, err = capsys.readouterr()
    effective = json.loads(out)
    assert effective["upstream"] == NOTHING
    assert effective["hmac_key"] == "***"
    assert "sekrit" not in out + err
    assert "pw@" not in err  # the startup line masks the Redis password
    start = json.loads(err.splitlines()[0])
    assert start["tiers"] == "memory+redis redis://***@127.0.0.1:6379/0"
    assert err.splitlines()[-1] == "settings OK"

    bad = tmp_path / "bad.toml"
    bad.write_text(f'upstream = "{NOTHING}"\nlog_level = "loud"\n')
    line = one_line_error(capsys, ["check-config", "--settings", str(bad)])
    assert "log_level" in line

    monkeypatch.setenv("CACHEPROXY_UPSTREAM", "http://h:notaport")
    assert "notaport" in one_line_error(capsys, ["check-config", "--settings"])

    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "x"\n')
    monkeypatch.setenv("CACHEPROXY_UPSTREAM", NOTHING)
    line = one_line_error(capsys, ["check-config", str(rules), "--settings"])
    assert "rules.toml: line 1" in line
