"""``--compare nginx``: the same workload through nginx ``proxy_cache``.

The point of comparison is the setup a site would write by hand: cache
``/jobs``, ``/job/{id}``, ``/nodes``, ``/node/{name}``, ``/partitions`` and
``/partition/{name}`` for the same TTLs as cacheproxy's default rules (read
from ``default_rules.toml``, so the two never drift apart), keyed on the user
and token headers so users never see each other's answers, with
``proxy_cache_lock on`` so concurrent misses make one upstream request.
nginx cannot invalidate on writes, which is exactly what the read-your-writes
check is there to show.  No gzip: nginx would compress every hit again (it
cannot keep a compressed copy of a proxied response), so it answers
uncompressed, like slurmrestd.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cacheproxy.bench import procs

CACHE_KEY = (
    "$request_method|$request_uri|$http_accept|"
    "$http_x_slurm_user_name|$http_x_slurm_user_token|$http_authorization"
)
"""Per user and per token, like cacheproxy's keys (nginx's ``$request_uri`` is not
normalised, so ``/jobs`` and ``/jobs/`` are two entries: a handicap nginx has)."""
CACHED_RULES = ("jobs", "job", "nodes", "node", "partitions", "partition")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}")


@dataclass(frozen=True, slots=True)
class CachedLocation:
    rule: str
    regex: str
    ttl: int


def find_nginx() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _path_regex(template: str) -> str:
    """``/slurm/{v}/job/{job_id}`` -> ``^/+slurm/+v[0-9]+\\.[0-9]+\\.[0-9]+/+job/+[^/]+/*$``."""
    out = []
    for seg in template.strip("/").split("/"):
        m = _PLACEHOLDER.fullmatch(seg)
        if m is None:
            out.append(re.escape(seg))
        elif m.group(1) == "v":
            out.append(r"v[0-9]+\.[0-9]+\.[0-9]+")
        else:
            out.append("[^/]+")
    return "^/+" + "/+".join(out) + "/*$"


def default_rule_ttls(names: tuple[str, ...] = CACHED_RULES) -> list[CachedLocation]:
    """The TTLs of cacheproxy's default rules for jobs, nodes and partitions."""
    text = resources.files("cacheproxy.core").joinpath("default_rules.toml").read_text()
    rules = {r["name"]: r for r in tomllib.loads(text).get("rule", [])}
    out = []
    for name in names:
        rule = rules.get(name)
        if rule is None or not rule.get("ttl"):
            continue
        out.append(CachedLocation(name, _path_regex(rule["path"]), max(1, round(rule["ttl"]))))
    return out


def render_config(
    workdir: Path, listen_port: int, upstream: str, locations: list[CachedLocation]
) -> str:
    up = upstream.removeprefix("http://").rstrip("/")
    if upstream.startswith("unix:"):
        up = "unix:" + upstream.removeprefix("unix:")
    user_line = ""
    if os.geteuid() == 0:
        # Workers would drop to "nobody" and lose access to a 0700 temp dir.
        user_line = f"user {pwd.getpwuid(0).pw_name};\n"
    cached = "".join(
        f"""
    # cacheproxy rule "{loc.rule}"
    location ~ {loc.regex} {{
      proxy_pass http://slurmrestd;
      proxy_cache slurm;
      proxy_cache_valid 200 {loc.ttl}s;
    }}
"""
        for loc in locations
    )
    return f"""{user_line}worker_processes 1;
error_log {workdir}/error.log warn;
pid {workdir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  proxy_cache_path {workdir}/cache levels=1:2 keys_zone=slurm:32m max_size=2g inactive=10m
                   use_temp_path=off;
  upstream slurmrestd {{
    server {up};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{listen_port};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffers 64 64k;
    proxy_cache_key "{CACHE_KEY}";
    proxy_cache_lock on;
    proxy_cache_lock_timeout 10s;
    add_header X-Cache-Status $upstream_cache_status always;
    # Everything else passes through uncached.
    location / {{
      proxy_pass http://slurmrestd;
    }}
{cached}  }}
}}
"""


def _write_config(conf: Path, log_dir: Path, text: str) -> None:
    conf.write_text(text)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "nginx.conf").write_text(text)


async def start_nginx(log_dir: Path, upstream: str, *, within: float = 20.0) -> procs.Service:
    binary = find_nginx()
    if binary is None:
        raise procs.StartError("nginx is not installed (Debian: apt-get install -y nginx)")
    # A temp dir, not the results dir: nginx writes each cache key (tokens
    # included) into its cache files.
    workdir = Path(tempfile.mkdtemp(prefix="cacheproxy-bench-nginx-"))
    port = procs.free_port()
    conf = workdir / "nginx.conf"
    _write_config(conf, log_dir, render_config(workdir, port, upstream, default_rule_ttls()))
    argv = [binary, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"]
    log_path = log_dir / "nginx.log"
    proc = procs.spawn("nginx", argv, log_path)
    url = f"http://127.0.0.1:{port}"

    def cleanup() -> None:
        error_log = workdir / "error.log"
        if error_log.exists():
            shutil.copyfile(error_log, log_dir / "nginx-error.log")
        shutil.rmtree(workdir, ignore_errors=True)

    service = procs.Service("nginx", proc, url, log_path, argv, cleanup)
    try:
        await procs.wait_for_http(proc, url + "/", log_path, "nginx", within, ok=None)
    except BaseException:
        service.stop()
        raise
    return service
