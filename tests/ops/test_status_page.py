"""The status page: served self-contained, and rendered with the numbers of
the JSON stats in a real browser (Debian's chromium, headless)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cacheproxy.http.app import CacheProxyApp
from cacheproxy.settings import Settings
from tests.clock import Clock
from tests.core.fake_slurmrestd import FakeSlurmrestd
from tests.ops.conftest import ADMIN_TOKEN, JOBS, PARTITIONS, admin, auth

PAGE = "/_cacheproxy/"
HOSTILE_TAG = "<img src=x onerror=alert(1)>"


async def test_page_is_served_self_contained(client: httpx.AsyncClient) -> None:
    r = await client.get(PAGE)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    assert 'id="hit-ratio"' in r.text
    assert 'fetch("stats"' in r.text
    # no external assets: nothing is loaded from anywhere but this page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text)
    assert "@import" not in r.text
    assert ".innerHTML" not in r.text  # values are text, never markup


async def test_prefix_without_slash_redirects(client: httpx.AsyncClient) -> None:
    r = await client.get("/_cacheproxy")
    assert r.status_code == 308
    assert r.headers["location"] == PAGE


def test_page_is_package_data() -> None:
    page = resources.files("cacheproxy.ops").joinpath("static/status.html")
    assert page.is_file()
    assert page.read_text("utf-8").startswith("<!doctype html>")


# -- in a real browser -------------------------------------------------------------
def chromium() -> str:
    """Debian's chromium; installed with apt when missing and we are root."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        found = shutil.which("chromium")
    if found is None:
        pytest.fail(
            "the status page test needs Debian's chromium: run `apt-get install chromium` as "
            "root (scripts/setup.sh does), or deselect it with -m 'not browser'"
        )
    return found


@pytest.fixture
async def served(app: CacheProxyApp) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port, in this event loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", ws="none", loop="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def run_chromium(*args: str) -> str:
    """Run headless chromium (its own throwaway profile); its stdout."""
    with tempfile.TemporaryDirectory(prefix="cacheproxy-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 180)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
        return out.decode()


def cells(dom: str, route: str) -> list[str]:
    """The texts of the per-route table row of ``route``."""
    row = re.search(rf'<tr data-route="{re.escape(route)}">(.*?)</tr>', dom)
    assert row is not None, route
    return [re.sub(r"<[^>]+>", "", c) for c in row.group(1).split("</td>")][:-1]


async def make_traffic(
    client: httpx.AsyncClient, upstream: FakeSlurmrestd, transport: Any, clock: Clock
) -> None:
    """partitions: miss, hit, hit; one submit; jobs: miss, hit, revalidated,
    stale (served while slurmrestd is down)."""
    upstream.clock = clock
    for _ in range(3):
        await client.get(PARTITIONS, headers=auth("alice"))
    await client.post("/slurm/v0.0.43/job/submit", headers=auth("alice"), content=b"{}")
    clock.advance(3)
    for _ in range(2):
        await client.get(JOBS, headers=auth("alice"))
    clock.advance(6)  # past the ttl: revalidated with update_time
    r = await client.get(JOBS, headers=auth("alice"))
    assert r.headers["cache-status"].startswith("cacheproxy; fwd=stale; fwd-status=304")
    clock.advance(10)
    transport.down = True
    r = await client.get(JOBS, headers=auth("alice"))
    assert "detail=stale-if-error" in r.headers["cache-status"]
    transport.down = False
    await client.post("/_cacheproxy/admin/purge", json={"tags": [HOSTILE_TAG]}, headers=admin())


@pytest.mark.browser
async def test_page_renders_the_stats_in_chromium(
    client: httpx.AsyncClient,
    upstream: FakeSlurmrestd,
    transport: Any,
    clock: Clock,
    served: str,
    tmp_path: Path,
) -> None:
    await make_traffic(client, upstream, transport, clock)
    stats = (await client.get("/_cacheproxy/stats")).json()
    ratio = f"{100 * stats['hit_ratio']:.1f}%"
    assert ratio == "37.5%"  # 3 hits of 8 answers (the submit included)

    dom = await run_chromium("--dump-dom", served + PAGE)
    assert f'id="hit-ratio">{ratio}<' in dom
    assert f'id="requests">{stats["requests"]}<' in dom
    assert f'id="upstream-requests">{stats["upstream_requests"]}<' in dom
    assert f'id="upstream-saved">{stats["upstream_saved"]}<' in dom
    for route in ("partitions", "jobs", "job-submit"):
        assert f'data-route="{route}"' in dom, route
    # route, requests, hits, hit ratio, misses, revalidated, stale, passed, too big, upstream
    assert cells(dom, "partitions")[:10] == [
        "partitions",
        "3",
        "2",
        "66.7%",
        "1",
        "0",
        "0",
        "0",
        "0",
        "1",
    ]
    row = cells(dom, "jobs")[:10]
    assert row == ["jobs", "4", "1", "25.0%", "1", "1", "1", "0", "0", "3"]
    row = cells(dom, "job-submit")[:10]
    assert row == ["job-submit", "1", "0", "–", "0", "0", "0", "1", "0", "1"]
    assert 'id="stale-served">1<' in dom
    assert 'id="max-stale-age">10.0 s<' in dom
    assert "● live" in dom
    # which proxy: version, upstream, tiers, worker, the cache against its bound
    about = stats["about"]
    assert f'id="version">{about["version"]}<' in dom
    assert 'id="upstream-url">http://upstream.test:6820<' in dom
    assert 'id="tiers">memory<' in dom
    assert f'id="worker">pid {os.getpid()}<' in dom
    assert 'id="workers">1<' in dom
    assert about["max_bytes"] == 1024**3  # the default (1 GiB)
    assert 'id="max-bytes">1.0 GiB<' in dom
    assert (
        'id="ready" class="ok">ok: reachable (HTTP 401 to the anonymous probe is expected)<' in dom
    )
    # recent invalidations: the submit's two bumps in one row; tags as text,
    # so markup in a tag stays inert
    assert re.search(r"<td>write</td><td>×2</td><td class=\"tags\">jobs, db\.jobs, ", dom)
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom
    assert "<img" not in dom

    shot = tmp_path / "status.png"
    await run_chromium("--window-size=1280,1000", f"--screenshot={shot}", served + PAGE)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000  # a rendered page, not a blank one
    keep = os.environ.get("CACHEPROXY_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


@pytest.mark.browser
async def test_page_shows_routes_the_audit_demoted(
    app: CacheProxyApp, served: str, client: httpx.AsyncClient
) -> None:
    """A wrong PrivateData, as the audit of shared views found it (issue 17)."""
    app.stats.shared_audits[("jobs", "different")] += 2
    app.stats.shared_audits[("nodes", "same")] += 1
    app.stats.demoted_routes["jobs"] = "two users got different answers to /slurm/v0.0.40/jobs"
    dom = await run_chromium("--dump-dom", served + PAGE)
    assert 'id="demoted">1<' in dom
    assert 'id="demoted-routes">jobs<' in dom
    assert 'id="audits">3<' in dom
    assert re.search(r'class="card bad" id="audit-card"|id="audit-card"[^>]*class="card bad"', dom)


@pytest.mark.browser
@pytest.mark.parametrize(
    "settings",
    [Settings(upstream="http://upstream.test:6820", admin_token=ADMIN_TOKEN, private_data="none")],
)
async def test_page_shows_each_routes_scope_and_the_sharing_counters(
    app: CacheProxyApp, served: str, client: httpx.AsyncClient
) -> None:
    """Shared, per user or demoted, and why; shared hits, proofs, withheld."""
    for user in ("alice", "bob", "bob"):
        assert (await client.get(PARTITIONS, headers=auth(user))).status_code == 200
    assert app.proxy is not None
    app.proxy.audit.demote("jobs", "two users got different answers", publish=False)
    dom = await run_chromium("--dump-dom", served + PAGE)
    scoped = {
        m.group(1): [re.sub(r"<[^>]+>", "", c) for c in m.group(2).split("</td>")][:-1]
        for m in re.finditer(r'<tr data-scope="([^"]+)">(.*?)</tr>', dom)
    }
    # route, scope, shared hits, proofs, withheld, why (bob's first request:
    # withheld, proved by the cheap question, then a shared hit)
    assert scoped["partitions"][:5] == ["partitions", "shared", "2", "2", "1"]
    assert "shared unless PrivateData has partitions" in scoped["partitions"][5]
    assert scoped["jobs"][:2] == ["jobs", "demoted"]
    assert "two users got different answers" in scoped["jobs"][5]
    assert scoped["db-wckeys"][1] == "per user"
    assert 'class="scope-demoted"' in dom
    assert re.search(r'id="private-data">PrivateData: setting: none · \d+ routes shared, ', dom)
