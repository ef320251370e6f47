"""Settings: every source, their precedence (file < environment < command
line), one-line errors, and the documentation of all of it in ``--help``."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cacheproxy.cli import main
from cacheproxy.settings import DEFAULT_PORT, Settings, SettingsError, load


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return str(path)


def test_precedence_file_then_environment_then_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 7001\nredis_prefix = "file:"\nlog-level = "debug"\n')
    env = {"CACHEPROXY_PORT": "7002", "CACHEPROXY_REDIS_PREFIX": "env:"}
    s = load(cli={"port": "7003", "host": None}, env=env, settings_file=path)
    assert (s.port, s.redis_prefix, s.log_level, s.host) == (7003, "env:", "debug", "127.0.0.1")
    s = load(env=env, settings_file=path)
    assert (s.port, s.redis_prefix) == (7002, "env:")
    s = load(env={"CACHEPROXY_SETTINGS": path})
    assert (s.port, s.redis_prefix) == (7001, "file:")
    assert load(env={}).port == DEFAULT_PORT


def test_values_are_typed_and_booleans_read_as_before() -> None:
    for text, expected in (("yes", True), ("On", True), ("1", True), ("", False), ("off", False)):
        s = load(env={"CACHEPROXY_ACCESS_LOG": text, "CACHEPROXY_LOCAL_TIER": text})
        assert (s.access_log, s.local_tier) == (expected, expected), text
    s = load(env={"CACHEPROXY_REDIS_TIMEOUT": " 0.25 ", "CACHEPROXY_WORKERS": "3"})
    assert (s.redis_timeout, s.workers) == (0.25, 3)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CACHEPROXY_PORT": "eighty"}, "port: invalid value 'eighty'"),
        ({"CACHEPROXY_ACCESS_LOG": "maybe"}, "access_log: invalid value 'maybe'"),
        ({"CACHEPROXY_PORT": "0"}, "port out of range: 0"),
        (
            {"CACHEPROXY_UPSTREAM": "ftp://x"},
            "upstream must be http://host:port, https://host:port or unix:/path",
        ),
    ],
)
def test_errors_are_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load(env=env)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_settings_file_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "colour = 1\n")
    with pytest.raises(SettingsError, match=r"settings\.toml: unknown setting 'colour'"):
        load(env={}, settings_file=path)
    path = write(tmp_path, "port = \n")
    with pytest.raises(SettingsError, match=r"settings\.toml: "):
        load(env={}, settings_file=path)
    with pytest.raises(SettingsError, match="no such file"):
        load(env={}, settings_file=str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="workers: invalid value True"):
        load(env={}, settings_file=write(tmp_path, "workers = true\n"))


def test_a_settings_object_reads_only_what_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEPROXY_PORT", "7777")
    assert Settings().port == DEFAULT_PORT
    assert Settings(port=7001).port == 7001
    with pytest.raises(ValidationError, match="frozen"):
        Settings().port = 1


def test_secrets_are_masked() -> None:
    s = Settings(hmac_key="k", admin_token="t", upstream="http://u:1")
    assert s.public()["hmac_key"] == s.public()["admin_token"] == "***"
    assert s.public()["upstream"] == "http://u:1"


def test_help_documents_every_option_and_the_precedence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Precedence, lowest first: the defaults, the settings file, the environment" in text
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text, name
        assert "CACHEPROXY_" + name.upper() in text, name


def test_a_bad_setting_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", "--upstream", "http://u:1", "--port", "x"]) == 2
    assert capsys.readouterr().err.strip() == "cacheproxy: port: invalid value 'x'"
