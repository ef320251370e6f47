"""Rule matching across versions, invalidation maps, and rule-file errors."""

from __future__ import annotations

import pytest

from cacheproxy.core.rules import ALL_TAG, RuleError, RuleSet, base_job_id

RULES = RuleSet.default()
VERSIONS = [f"v0.0.{n}" for n in range(36, 46)]


def seg(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split("/") if p)


@pytest.mark.parametrize("v", VERSIONS)
@pytest.mark.parametrize(
    ("path", "name", "ttl"),
    [
        ("/slurm/{v}/jobs", "jobs", 5),
        ("/slurm/{v}/jobs/state", "jobs-state", 5),
        ("/slurm/{v}/job/123", "job", 5),
        ("/slurm/{v}/nodes", "nodes", 10),
        ("/slurm/{v}/node/c1", "node", 10),
        ("/slurm/{v}/partitions", "partitions", 60),
        ("/slurm/{v}/partition/debug", "partition", 60),
        ("/slurm/{v}/reservations", "reservations", 30),
        ("/slurm/{v}/reservation/maint", "reservation", 30),
        ("/slurm/{v}/licenses", "licenses", 10),
        ("/slurm/{v}/shares", "shares", 60),
        ("/slurmdb/{v}/users", "db-users", 120),
        ("/slurmdb/{v}/accounts", "db-accounts", 120),
        ("/slurmdb/{v}/associations", "db-associations", 120),
        ("/slurmdb/{v}/qos", "db-qos", 300),
        ("/slurmdb/{v}/tres", "db-tres", 300),
        ("/slurmdb/{v}/clusters", "db-clusters", 300),
        ("/slurmdb/{v}/wckeys", "db-wckeys", 120),
        ("/slurmdb/{v}/jobs", "db-jobs", 30),
        ("/slurmdb/{v}/job/42", "db-job", 30),
        ("/slurmdb/{v}/config", "db-config", 300),
    ],
)
def test_cached_gets_match_in_every_version(v: str, path: str, name: str, ttl: int) -> None:
    m = RULES.match("GET", seg(path.format(v=v)))
    assert m.name == name
    assert m.cache
    assert m.ttl == ttl
    assert m.tags[-2:] == ("@" + path.split("/")[1], ALL_TAG)


@pytest.mark.parametrize(
    "path",
    [
        "/slurm/v0.0.43/ping",
        "/slurm/v0.0.43/diag",
        "/slurmdb/v0.0.43/diag",
        "/slurm/v0.0.44/reconfigure",
        "/slurm/v0.0.45/job/12/requeue",
        "/slurm/v0.0.45/something-new",
        "/slurm/notaversion/jobs",
        "/elsewhere",
    ],
)
def test_never_cached(path: str) -> None:
    assert not RULES.match("GET", seg(path)).cache


def test_reconfigure_invalidates_all_of_slurm() -> None:
    assert "@slurm" in RULES.match("GET", seg("/slurm/v0.0.43/reconfigure")).invalidates


def test_requeue_get_is_a_write() -> None:
    m = RULES.match("GET", seg("/slurm/v0.0.45/job/12_3/requeue"))
    assert {"job:12", "jobs"} <= set(m.invalidates)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/slurm/v0.0.38/job/submit", {"jobs", "db.jobs"}),
        ("POST", "/slurm/v0.0.43/job/77", {"job:77", "jobs", "db.job:77"}),
        ("DELETE", "/slurm/v0.0.43/job/77_3", {"job:77", "jobs"}),
        ("DELETE", "/slurm/v0.0.43/job/77+1", {"job:77", "jobs"}),
        ("DELETE", "/slurm/v0.0.43/jobs", {"jobs", "jobs.each"}),
        ("POST", "/slurm/v0.0.43/node/c1", {"nodes", "partitions"}),
        ("POST", "/slurm/v0.0.43/reservation", {"reservations", "nodes"}),
        ("DELETE", "/slurm/v0.0.43/reservation/r", {"reservations"}),
        ("POST", "/slurmdb/v0.0.43/accounts", {"db.accounts", "db.associations", "db.config"}),
        ("POST", "/slurmdb/v0.0.43/qos", {"db.qos", "db.associations", "db.config"}),
        ("POST", "/slurmdb/v0.0.43/config", {"@slurmdb"}),
        ("PUT", "/slurm/v0.0.43/jobs", {ALL_TAG}),
        ("POST", "/slurm/v0.0.43/unknown", {ALL_TAG}),
    ],
)
def test_writes_invalidate(method: str, path: str, expected: set[str]) -> None:
    m = RULES.match(method, seg(path))
    assert not m.cache
    assert expected <= set(m.invalidates)


def test_job_entry_tags_use_the_base_job_id() -> None:
    m = RULES.match("GET", seg("/slurm/v0.0.43/job/123_4"))
    assert "job:123" in m.tags
    assert base_job_id("123+1") == "123"


def test_util_posts_invalidate_nothing() -> None:
    assert RULES.match("POST", seg("/util/v0.0.44/hostlist")).invalidates == ()


def test_first_match_wins() -> None:
    rs = RuleSet.from_toml(
        '[[rule]]\nname="a"\npath="/slurm/{v}/jobs"\ncache=false\n'
        '[[rule]]\nname="b"\npath="/slurm/{v}/jobs"\nttl=5\n'
    )
    assert rs.match("GET", seg("/slurm/v0.0.40/jobs")).name == "a"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[[rule]]\npath="/slurm/{v}/jobs"\nttl=-1\n', "line 1"),
        ('\n\n[[rule]]\npath="slurm/jobs"\n', "line 3"),
        ('[[rule]]\npath="/slurm/{v}/job/{id}"\nttl=5\ntags=["job:{nope}"]\n', "does not bind"),
        ('[[rule]]\nmethods=["POST"]\npath="/x"\nttl=5\n', "only GET"),
        ('[[rule]]\npath="/x"\nttl=5\ninvalidates=["a"]\n', "cannot invalidate"),
        ('[[rule]]\npath="/x"\nbogus=1\n', "unknown key"),
        ('[[rule]]\npath="/{v}/x"\n', "first segment"),
        ("[[rule]\n", "line 1"),
        ('[[rule]]\npath="/x/{a}/{a}"\n', "twice"),
    ],
)
def test_bad_rules_are_refused_with_line_and_reason(text: str, fragment: str) -> None:
    with pytest.raises(RuleError, match=fragment.replace("{", r"\{")):
        RuleSet.from_toml(text, "rules.toml")


def test_check_config_prints_effective_rules(capsys: pytest.CaptureFixture[str]) -> None:
    from cacheproxy.cli import main

    assert main(["check-config", "config/rules.toml"]) == 0
    out = capsys.readouterr().out
    assert '"name": "jobs"' in out


def test_check_config_refuses_a_bad_file(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    from cacheproxy.cli import main

    bad = Path(str(tmp_path)) / "bad.toml"
    bad.write_text('[[rule]]\npath="/slurm/{v}/jobs"\nttl="5"\n')
    assert main(["check-config", str(bad)]) == 1
    assert "line 1" in capsys.readouterr().err
