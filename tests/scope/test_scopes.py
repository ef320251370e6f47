"""Route scopes: the PrivateData table and the site's setting (pure parts)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from cacheproxy.core import privatedata, scopes
from cacheproxy.core.rules import RuleSet
from cacheproxy.http.sitescope import SiteScopes

RULES = RuleSet.default().rules
CACHED = {r.name for r in RULES if r.cache}


def test_nothing_configured_every_route_per_user() -> None:
    site = SiteScopes(RULES)
    assert not site.configured
    assert not any(site.shared(name) for name in CACHED)


def test_none_shares_every_route_in_the_table_and_nothing_else() -> None:
    site = SiteScopes(RULES, private_data="none")
    shared = {name for name in CACHED if site.shared(name)}
    assert shared == set(scopes.GOVERNED_BY) & CACHED
    for kept in ("conf", "db-conf", "openapi"):
        assert kept not in shared


@pytest.mark.parametrize("word", privatedata.WORDS)
def test_each_word_makes_its_routes_per_user(word: str) -> None:
    site = SiteScopes(RULES, private_data=word)
    for name, governed in scopes.GOVERNED_BY.items():
        assert site.shared(name) == (word not in governed.words), name


def test_jobs_word_keeps_the_job_routes_per_user_and_shares_the_rest() -> None:
    site = SiteScopes(RULES, private_data="jobs")
    for name in ("jobs", "job", "jobs-state", "resources", "db-jobs", "db-job"):
        assert not site.shared(name)
    for name in ("nodes", "partitions", "reservations", "db-qos", "licenses"):
        assert site.shared(name)


def test_union_of_words_and_all() -> None:
    site = SiteScopes(RULES, private_data="jobs,Nodes")
    assert not site.shared("jobs")
    assert not site.shared("node")
    assert site.shared("db-qos")
    everything = SiteScopes(RULES, private_data="all")
    assert {n for n in CACHED if everything.shared(n)} == {
        n for n, g in scopes.GOVERNED_BY.items() if not g.words
    }


def test_demote_turns_a_route_back_to_per_user() -> None:
    site = SiteScopes(RULES, private_data="none")
    assert site.shared("jobs")
    site.demote("jobs")
    assert not site.shared("jobs")
    assert site.shared("nodes")
    assert any(d["route"] == "jobs" and "demoted" in d["why"] for d in site.describe())


def test_slurm_conf_read_at_start_and_when_it_changes(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=c\n# PrivateData=all\nPrivateData=jobs SlurmUser=slurm\n")
    now = [0.0]
    site = SiteScopes(RULES, slurm_conf=str(conf), clock=lambda: now[0])
    assert not site.shared("jobs")
    assert site.shared("nodes")
    # slurmdbd.conf's PrivateData is unknown: the slurmdb routes stay per user.
    assert not site.shared("db-qos")
    conf.write_text("ClusterName=c\nPrivateData=nodes,partitions\n")
    os.utime(conf, ns=(10**18, 10**18))
    assert site.shared("nodes")  # (not looked at again within the second)
    now[0] = 2.0
    assert site.shared("jobs")
    assert not site.shared("nodes")
    conf.unlink()
    now[0] = 4.0
    assert not site.shared("jobs")  # unreadable: unknown, per user


def test_setting_and_slurm_conf_union(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("PrivateData=nodes\n")
    site = SiteScopes(RULES, private_data="jobs", slurm_conf=str(conf))
    assert not site.shared("jobs")
    assert not site.shared("nodes")
    assert site.shared("db-qos")


def test_slurm_conf_value_parsing() -> None:
    v = privatedata.slurm_conf_value
    assert v("PrivateData=jobs\nprivatedata=usage # later wins\n") == "usage"
    assert v('Foo=1 PRIVATEDATA="jobs,users"') == "jobs,users"
    assert v("#PrivateData=jobs\n") is None


def test_reconfigure_follows_new_sources_and_keeps_the_demoted(tmp_path: Path) -> None:
    """A reload: new PrivateData and slurm.conf take effect in place; a
    route the audit demoted stays per user; a bad word changes nothing."""
    site = SiteScopes(RULES, private_data="none")
    site.demote("nodes")
    site.reconfigure(RULES, private_data="jobs", slurm_conf="")
    assert not site.shared("jobs")
    assert not site.shared("nodes")  # demoted: for the process's life
    assert site.shared("partitions")
    with pytest.raises(ValueError, match="unknown PrivateData word 'bogus'"):
        site.reconfigure(RULES, private_data="bogus", slurm_conf="")
    assert not site.shared("jobs")
    assert site.shared("partitions")
    conf = tmp_path / "slurm.conf"
    conf.write_text("PrivateData=partitions\n")
    site.reconfigure(RULES, private_data="", slurm_conf=str(conf))
    assert site.shared("jobs")
    assert not site.shared("partitions")
    assert not site.shared("nodes")
    # new rules: a route by another name is judged by the table again
    renamed = [dataclasses.replace(r, name="mine") if r.name == "jobs" else r for r in RULES]
    site.reconfigure(renamed, private_data="none", slurm_conf="")
    assert "jobs" not in {d["route"] for d in site.describe()}
    assert not site.shared("mine")  # not in the table: per user


def test_summary_counts_scopes_and_names_each_source(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("PrivateData=jobs\n")
    site = SiteScopes(RULES, private_data="reservations", slurm_conf=str(conf))
    summary = site.summary()
    described = site.describe()
    shared = sum(d["scope"] == "shared" for d in described)
    assert 0 < shared < len(described)
    assert (summary["shared"], summary["user"]) == (shared, len(described) - shared)
    assert summary["setting"] == "reservations"
    assert summary["slurm_conf"] == {"path": str(conf), "words": "jobs"}
    assert SiteScopes(RULES).summary()["setting"] is None
    assert SiteScopes(RULES).summary()["slurm_conf"] is None
    assert SiteScopes(RULES).summary()["shared"] == 0
