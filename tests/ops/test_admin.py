"""The admin API: refused without the right token, off without one, and
purges that make the next request miss."""

from __future__ import annotations

import httpx
import pytest

from cacheproxy.core.usertag import user_name, user_tag
from cacheproxy.http import hardening
from cacheproxy.http.app import CacheProxyApp
from cacheproxy.ops import logfmt
from cacheproxy.settings import Settings
from tests.ops.conftest import ADMIN_TOKEN, JOBS, PARTITIONS, AppFactory, admin, auth

PURGE = "/_cacheproxy/admin/purge"
STATS = "/_cacheproxy/admin/stats"


def status_of(r: httpx.Response) -> str:
    return r.headers["cache-status"]


async def fill(client: httpx.AsyncClient, *paths: str, user: str = "alice") -> None:
    """Cache ``paths`` for ``user`` and check they now hit."""
    for path in paths:
        await client.get(path, headers=auth(user))
        assert status_of(await client.get(path, headers=auth(user))).startswith("cacheproxy; hit")


@pytest.mark.parametrize(("method", "path"), [("GET", STATS), ("POST", PURGE)])
async def test_refused_without_or_with_a_wrong_token(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    body = {"all": True}
    r = await client.request(method, path, json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = await client.request(method, path, json=body, headers={"Authorization": "Basic eDp5"})
    assert r.status_code == 401
    r = await client.request(method, path, json=body, headers=admin("not-the-token"))
    assert r.status_code == 403
    r = await client.request(method, path, json=body, headers=admin(ADMIN_TOKEN + "x"))
    assert r.status_code == 403
    r = await client.request(method, path, json=body, headers=admin())
    assert r.status_code == 200


async def test_off_without_a_configured_token(make_app: AppFactory) -> None:
    app: CacheProxyApp = await make_app(Settings(upstream="http://upstream.test:6820"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
    ) as c:
        for headers in ({}, admin(), admin("")):
            assert (await c.get(STATS, headers=headers)).status_code == 404
            assert (await c.post(PURGE, json={"all": True}, headers=headers)).status_code == 404


async def test_purge_by_tag(client: httpx.AsyncClient) -> None:
    await fill(client, JOBS, PARTITIONS)
    r = await client.post(PURGE, json={"tags": ["jobs"]}, headers=admin())
    assert r.status_code == 200
    assert r.json() == {"purged": ["jobs"], "scope": "process"}
    assert status_of(await client.get(JOBS, headers=auth("alice"))).startswith(
        "cacheproxy; fwd=miss"
    )
    assert status_of(await client.get(PARTITIONS, headers=auth("alice"))).startswith(
        "cacheproxy; hit"
    )


async def test_purge_by_route(client: httpx.AsyncClient) -> None:
    await fill(client, JOBS, PARTITIONS)
    r = await client.post(PURGE, json={"routes": ["partitions"]}, headers=admin())
    assert r.status_code == 200
    assert r.json()["purged"] == ["partitions"]
    assert status_of(await client.get(PARTITIONS, headers=auth("alice"))).startswith(
        "cacheproxy; fwd=miss"
    )
    assert status_of(await client.get(JOBS, headers=auth("alice"))).startswith("cacheproxy; hit")


async def test_purge_by_route_with_only_templated_tags_purges_its_family(
    client: httpx.AsyncClient, app: CacheProxyApp
) -> None:
    from cacheproxy.core.rules import RuleSet

    assert app.proxy is not None
    app.proxy.rules = RuleSet.from_toml(
        '[[rule]]\nname="one-job"\npath="/slurm/{v}/job/{job_id}"\nttl=30\n'
        'tags=["job:{job_id:base}"]\n'
    )
    r = await client.post(PURGE, json={"routes": ["one-job"]}, headers=admin())
    assert r.json()["purged"] == ["@slurm"]


async def test_purge_everything(client: httpx.AsyncClient) -> None:
    await fill(client, JOBS, PARTITIONS)
    await fill(client, JOBS, user="bob")
    r = await client.post(PURGE, json={"all": True}, headers=admin())
    assert r.json()["purged"] == ["@all"]
    for user, path in (("alice", JOBS), ("alice", PARTITIONS), ("bob", JOBS)):
        assert status_of(await client.get(path, headers=auth(user))).startswith(
            "cacheproxy; fwd=miss"
        ), (user, path)


async def test_purge_by_user_bumps_the_users_tag(
    client: httpx.AsyncClient, app: CacheProxyApp
) -> None:
    """The admin side of purge-by-user: with a proxy that tags entries per
    user (``Proxy.user_tag``), the user's tag is what gets bumped."""
    assert app.proxy is not None
    key = b"k" * 32
    app.proxy.user_tag = lambda name: user_tag(key, name)  # type: ignore[method-assign]
    r = await client.post(PURGE, json={"users": ["alice"]}, headers=admin())
    assert r.status_code == 200
    tag = user_tag(key, "alice")
    assert r.json()["purged"] == [tag]
    assert await app.proxy.store.generations([tag]) != (0,)
    assert await app.proxy.store.generations([user_tag(key, "bob")]) == (0,)


async def test_purge_by_user_end_to_end(client: httpx.AsyncClient, app: CacheProxyApp) -> None:
    """Once the proxy tags entries per user (proposal: ``Proxy.user_tag``)."""
    assert app.proxy is not None
    if not hasattr(type(app.proxy), "user_tag"):
        pytest.skip("the proxy does not add per-user tags yet (see cacheproxy/usertag.py)")
    await fill(client, JOBS, PARTITIONS)
    await fill(client, JOBS, PARTITIONS, user="bob")
    r = await client.post(PURGE, json={"users": ["alice"]}, headers=admin())
    assert r.status_code == 200
    assert r.json()["purged"][0].startswith("@user:")
    for path in (JOBS, PARTITIONS):
        assert status_of(await client.get(path, headers=auth("alice"))).startswith(
            "cacheproxy; fwd=miss"
        )
        assert status_of(await client.get(path, headers=auth("bob"))).startswith("cacheproxy; hit")


def test_user_tag_is_keyed_and_hides_the_name() -> None:
    tag = user_tag(b"key-1", "alice")
    assert tag.startswith("@user:")
    assert "alice" not in tag
    assert tag == user_tag(b"key-1", "alice")
    assert tag != user_tag(b"key-2", "alice")
    assert tag != user_tag(b"key-1", "bob")
    assert user_name("name:alice") == "alice"
    assert user_name("sun:alice") == "alice"
    assert user_name("cred:abcdef") is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 400),
        ({"routes": ["no-such-rule"]}, 400),
        ({"routes": ["ping"]}, 400),  # caches nothing
        ({"tags": [""]}, 422),
        ({"tags": "jobs"}, 422),
        ({"everything": True}, 422),
    ],
)
async def test_bad_purges_are_refused(
    client: httpx.AsyncClient, body: dict[str, object], status: int
) -> None:
    await fill(client, JOBS)
    r = await client.post(PURGE, json=body, headers=admin())
    assert r.status_code == status, r.text
    assert status_of(await client.get(JOBS, headers=auth("alice"))).startswith("cacheproxy; hit")


async def test_purges_show_in_stats(client: httpx.AsyncClient) -> None:
    await client.post(PURGE, json={"tags": ["job:4242", "jobs"]}, headers=admin())
    detailed = (await client.get(STATS, headers=admin())).json()
    assert detailed["recent_invalidations"][0]["tags"] == ["job:4242", "jobs"]
    assert detailed["recent_invalidations"][0]["source"] == "admin"
    assert detailed["settings"]["admin_token"] == "***"
    assert ADMIN_TOKEN not in str(detailed)
    assert {"name": "jobs", "path": "/slurm/{v}/jobs", "ttl": 5.0, "tags": ["jobs"]} in detailed[
        "rules"
    ]
    public = (await client.get("/_cacheproxy/stats")).json()
    assert public["recent_invalidations"][0]["tags"] == ["job:*", "jobs"]
    assert public["invalidations"] == {"job:*": 1, "jobs": 1}
    assert "settings" not in public


async def test_admin_requests_never_reach_upstream(
    client: httpx.AsyncClient, transport: object
) -> None:
    """Admin routes forward nothing (the admin token never leaves the proxy)."""
    sent_before = len(transport.sent)  # type: ignore[attr-defined]
    await client.post(PURGE, json={"all": True}, headers=admin())
    await client.get(STATS, headers=admin())
    assert len(transport.sent) == sent_before  # type: ignore[attr-defined]


async def test_admin_token_guessing_is_blocked_after_the_limit(make_app: AppFactory) -> None:
    """Issue 14, defect 5: wrong admin tokens count as authentication
    failures of the client's address (``auth_fail_limit``); past the limit
    that address gets 429, even with the right token, and never a purge."""
    settings = Settings(
        upstream="http://upstream.test:6820", admin_token=ADMIN_TOKEN, auth_fail_limit=5
    )
    app: CacheProxyApp = await make_app(settings)
    served = hardening.wrap(app)

    def client(addr: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=served, client=(addr, 4321))
        return httpx.AsyncClient(transport=transport, base_url="http://proxy.test")

    async with client("10.6.0.1") as guesser, client("10.6.0.2") as operator:
        for i in range(5):
            r = await guesser.post(PURGE, json={"all": True}, headers=admin(f"guess-{i}"))
            assert r.status_code == 403
        r = await guesser.post(PURGE, json={"all": True}, headers=admin("guess-5"))
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) > 0
        r = await guesser.post(PURGE, json={"all": True}, headers=admin())
        assert r.status_code == 429  # the address is blocked: no token passes
        assert (await guesser.get("/_cacheproxy/health")).status_code == 200
        assert (await operator.get(STATS, headers=admin())).status_code == 200
    assert app.stats.auth_blocked == 2
    assert not app.stats.recent_invalidations  # no purge went through


async def test_admin_stats_show_the_settings_a_reload_applied(
    make_app: AppFactory, settings: Settings
) -> None:
    """The live settings as they are now, not as the process started."""
    app: CacheProxyApp = await make_app(settings)
    apply = hardening.reload_into(hardening.wrap(app), app)
    apply(app.settings.model_copy(update={"private_data": "jobs", "log_level": "debug"}), app.rules)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy.test"
    ) as c:
        r = await c.get("/_cacheproxy/admin/stats", headers=admin())
    assert r.status_code == 200
    assert r.json()["settings"]["private_data"] == "jobs"
    assert r.json()["settings"]["log_level"] == "debug"
    logfmt.set_level(settings.log_level)
