"""Authentication behaves like slurmrestd's rest_auth/jwt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cacheproxy.simulator.config import load_users_file
from tests.simulator.conftest import ROOT, auth, started

FAILURE = (401, "Authentication failure")


@pytest.mark.parametrize(
    ("version", "headers", "expected"),
    [(v, h, FAILURE) for v in ("v0.0.38", "v0.0.43") for h in ({}, {"X-SLURM-USER-NAME": "root"})]
    + [
        ("v0.0.38", {"X-SLURM-USER-TOKEN": "sim-token-root"}, FAILURE),
        # later releases: both token headers together are ambiguous, and the
        # Bearer scheme is spelled exactly
        (
            "v0.0.43",
            {"X-SLURM-USER-TOKEN": "sim-token-root", "Authorization": "Bearer sim-token-root"},
            FAILURE,
        ),
        ("v0.0.43", {"Authorization": "bearer sim-token-root"}, FAILURE),
        # 25.11 (v0.0.44 under --style all): the router answers with the
        # error's own status and text
        ("v0.0.44", {}, (500, "Authentication does not apply to request")),
        ("v0.0.44", {"X-SLURM-USER-NAME": "root"}, (401, "Invalid authentication credential")),
    ],
)
def test_slurmrestd_itself_refuses_in_text(
    client: httpx.Client, version: str, headers: dict[str, str], expected: tuple[int, str]
) -> None:
    r = client.get(f"/slurm/{version}/jobs", headers=headers)
    assert (r.status_code, r.text) == expected
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["connection"].lower() == "close"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": "garbage"},
        {"X-SLURM-USER-NAME": "user002", "X-SLURM-USER-TOKEN": "sim-token-user001"},
    ],
)
def test_rejected_token_is_500_json_on_2205(client: httpx.Client, headers: dict[str, str]) -> None:
    r = client.get("/slurm/v0.0.38/jobs", headers=headers)
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.headers["connection"].lower() == "close"
    body = r.json()
    assert body["errors"][0]["error_number"] == -1
    assert body["errors"][0]["error"] == "Unspecified error"
    assert body["errors"][0]["source"] == "slurm_load_jobs"
    assert body["jobs"] == []


def test_rejected_token_is_511_json_on_25x(client: httpx.Client) -> None:
    r = client.get(
        "/slurm/v0.0.43/jobs", headers={"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": "nope"}
    )
    assert r.status_code == 511
    assert r.headers["connection"].lower() == "close"
    body = r.json()
    assert body["errors"][0]["error_number"] == 1007
    assert body["jobs"] == []


def test_valid_token_is_200_without_extra_headers(client: httpx.Client) -> None:
    r = client.get("/slurm/v0.0.38/ping", headers=auth("user001"))
    assert r.status_code == 200
    assert set(r.headers) == {"content-type", "content-length"}
    assert r.headers["content-type"] == "application/json"


def acting_user(c: httpx.Client, version: str, headers: dict[str, str]) -> str:
    """Who slurmrestd acts as, seen as slurmdbd shows it under PrivateData=users
    (``meta.client.user`` is the plugin's constant, not the requester)."""
    r = c.get(f"/slurmdb/{version}/users", headers=headers)
    assert r.status_code == 200, r.text
    (user,) = r.json()["users"]
    return str(user["name"])


@pytest.fixture
def private_users() -> Iterator[httpx.Client]:
    with started(private_data="users") as running, running.client() as c:
        yield c


def test_bearer_works_on_25x_only(private_users: httpx.Client) -> None:
    c = private_users
    bearer = {"Authorization": "Bearer sim-token-user007"}
    assert acting_user(c, "v0.0.44", bearer) == "user007"
    assert c.get("/slurm/v0.0.38/ping", headers=bearer).status_code == 401
    r = c.get("/slurm/v0.0.43/ping", headers={"Authorization": "Bearer unknown"})
    assert r.status_code == 511


def test_a_token_alone_acts_as_its_owner_after_2205(private_users: httpx.Client) -> None:
    headers = {"X-SLURM-USER-TOKEN": "sim-token-user007"}
    assert acting_user(private_users, "v0.0.43", headers) == "user007"


def test_root_token_acts_as_named_user(private_users: httpx.Client) -> None:
    headers = {"X-SLURM-USER-NAME": "user042", "X-SLURM-USER-TOKEN": ROOT["X-SLURM-USER-TOKEN"]}
    assert acting_user(private_users, "v0.0.43", headers) == "user042"
    assert acting_user(private_users, "v0.0.38", headers) == "user042"


def test_users_file(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    users.write_text('{"alice": "tok-a", "bob": "tok-b"}')
    with started(users=load_users_file(users)) as running, running.client() as c:
        alice = {"X-SLURM-USER-NAME": "alice", "X-SLURM-USER-TOKEN": "tok-a"}
        assert c.get("/slurm/v0.0.38/ping", headers=alice).status_code == 200
        wrong = {"X-SLURM-USER-NAME": "alice", "X-SLURM-USER-TOKEN": "tok-b"}
        assert c.get("/slurm/v0.0.38/ping", headers=wrong).status_code == 500
        assert c.get("/slurm/v0.0.38/ping", headers=auth("user001")).status_code == 500
        # root is always there, with the default token unless the file says otherwise
        assert c.get("/slurm/v0.0.38/ping", headers=ROOT).status_code == 200
