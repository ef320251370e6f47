"""A real single-node Slurm 22.05 cluster, stood up in a private temp directory.

Why it exists: the simulator reproduces what we *believe* slurmrestd does; this
cluster is the ground truth the proxy is proven against (status codes, headers,
PrivateData, slurmctld's own RPC counters).

Everything is private to one instance so that nothing on the machine is
disturbed and two clusters (or two CI runs in a row) never meet:

* its own munged (own key, own ``--socket``), pointed at by ``AuthInfo=socket=``;
* its own slurm.conf, state, spool, pid and log files under one temp dir;
* free loopback ports for slurmctld, slurmd and slurmrestd, with
  ``CommunicationParameters=NoCtldInAddrAny,NoInAddrAny`` so nothing listens
  beyond 127.0.0.1;
* daemons run in the foreground (``-D``/``-F``) as our own children, and are
  stopped by pid, together with any process that carries this cluster's
  private environment marker (slurmstepd outlives slurmd otherwise).

Only the packages and the two test users (``useradd``) touch the system, and
both are idempotent.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

PACKAGES: tuple[str, ...] = (
    "slurmctld",
    "slurmd",
    "slurmrestd",
    "slurm-wlm-jwt-plugin",
    "slurm-client",
    "munge",
)
"""Debian 12 packages the cluster needs (auth/jwt is a package of its own;
slurm-client brings scontrol, squeue and scancel, which the harness calls)."""

DBD_PACKAGES: tuple[str, ...] = ("slurmdbd", "mariadb-server")
"""Extra packages for the optional accounting tier (``/slurmdb/`` paths)."""

API = "v0.0.38"
"""The newest data parser 22.05 serves; the one the generated client speaks."""

REST_PLUGINS = "openapi/v0.0.36,openapi/v0.0.37,openapi/v0.0.38"
"""Without slurmdbd, slurmrestd refuses to start unless the dbv* plugins are
left out explicitly."""

REST_USER = "nobody"
"""slurmrestd refuses to run as root or as SlurmUser; with ``SLURM_JWT=daemon``
it needs no privilege at all, so the one user every system has will do."""

DEFAULT_USERS: tuple[str, ...] = ("cpalice", "cpbob")

ENV_MARKER = "CACHEPROXY_REALSLURM_DIR"
"""Set in every daemon's environment to this cluster's directory; inherited by
slurmstepd, so stop() can find exactly this cluster's leftovers."""


class ClusterUnavailable(RuntimeError):
    """The cluster cannot be provided here (packages missing and not root, ...).

    The fixture turns this into a failure with this message, or into a skip
    when ``CACHEPROXY_SKIP_REALSLURM=1`` says so.
    """


class ClusterError(RuntimeError):
    """The cluster was provided but misbehaved (a daemon died, a timeout)."""


# -- packages and users -------------------------------------------------------


def missing_packages(packages: Sequence[str] = PACKAGES) -> list[str]:
    """The packages of ``packages`` that dpkg does not report as installed."""
    if shutil.which("dpkg-query") is None:
        return list(packages)
    missing = []
    for pkg in packages:
        res = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0 or "install ok installed" not in res.stdout:
            missing.append(pkg)
    return missing


def ensure_installed(packages: Sequence[str] = PACKAGES) -> None:
    """Install the Debian packages when missing; a no-op when all are there.

    Raises :class:`ClusterUnavailable` when something is missing and we may not
    (not root) or cannot (no apt) install it, so the caller can say so clearly
    instead of skipping silently.
    """
    missing = missing_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            f"cannot install the real-Slurm packages: {' '.join(missing)} missing and not root; "
            f"run `apt-get install -y {' '.join(PACKAGES)}` as root, "
            "or set CACHEPROXY_SKIP_REALSLURM=1 to skip these tests"
        )
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(
            f"cannot install the real-Slurm packages: {' '.join(missing)} missing and no apt-get"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        # Stale or absent package lists are the usual cause on a fresh machine.
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=False)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0 or missing_packages(packages):
        raise ClusterUnavailable(
            f"cannot install the real-Slurm packages ({' '.join(cmd)} exited "
            f"{res.returncode}): {res.stderr.strip()[-2000:]}"
        )


def ensure_users(users: Sequence[str]) -> None:
    """Create the ordinary test users when missing (jobs run as them)."""
    for user in users:
        try:
            pwd.getpwnam(user)
            continue
        except KeyError:
            pass
        if os.geteuid() != 0:
            raise ClusterUnavailable(f"cannot create test user {user!r}: not root")
        res = subprocess.run(
            [
                "useradd",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "cacheproxy realslurm test user",
                user,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        # 9: created meanwhile by a concurrent run; fine.
        if res.returncode not in (0, 9):
            raise ClusterUnavailable(f"cannot create test user {user!r}: {res.stderr.strip()}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# -- the cluster --------------------------------------------------------------


@dataclass
class _Daemon:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class RealSlurmCluster:
    """One slurmctld + slurmd + slurmrestd (+ munged) on 127.0.0.1.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. After
    start: :attr:`url` is slurmrestd's base URL and :attr:`tokens` maps
    ``root`` and every user in :attr:`users` to a JWT.
    """

    users: tuple[str, ...] = DEFAULT_USERS
    token_lifespan: int = 4 * 3600
    start_timeout: float = 60.0
    keep_dir: bool = False
    """Keep the temp dir (logs, state) after stop, for debugging."""
    extra_conf: tuple[str, ...] = ()
    """Lines appended to slurm.conf (e.g. ``MessageTimeout=3``)."""
    slurmdbd: bool = False
    """Also run slurmdbd on a private mariadbd, so ``/slurmdb/`` answers
    (adds about 3 s to the start)."""

    root_dir: Path = field(init=False)
    ctld_port: int = field(init=False, default=0)
    slurmd_port: int = field(init=False, default=0)
    rest_port: int = field(init=False, default=0)
    dbd_port: int = field(init=False, default=0)
    mysql_port: int = field(init=False, default=0)
    tokens: dict[str, str] = field(init=False, default_factory=dict)
    startup_seconds: float = field(init=False, default=0.0)
    _daemons: list[_Daemon] = field(init=False, default_factory=list)
    _started: bool = field(init=False, default=False)
    _db_password: str = field(init=False, default="", repr=False)

    # -- public API -----------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def conf(self) -> Path:
        return self.root_dir / "etc" / "slurm.conf"

    @property
    def work_dir(self) -> Path:
        """A world-writable (sticky) directory for jobs' working directory."""
        return self.root_dir / "work"

    def env(self) -> dict[str, str]:
        """Environment for Slurm CLI tools (scontrol, squeue...) aimed at us."""
        return {**os.environ, "SLURM_CONF": str(self.conf), ENV_MARKER: str(self.root_dir)}

    def headers(self, user: str) -> dict[str, str]:
        """slurmrestd auth headers of ``user`` (``root`` or one of :attr:`users`)."""
        return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": self.tokens[user]}

    def start(self) -> RealSlurmCluster:
        """Install if needed, configure, start every daemon, wait, mint tokens.

        On any failure everything already started is stopped before raising.
        """
        if self._started:
            return self
        t0 = time.monotonic()
        ensure_installed(PACKAGES + DBD_PACKAGES if self.slurmdbd else PACKAGES)
        if os.geteuid() != 0:
            raise ClusterUnavailable("cannot run slurmctld/slurmd: not root")
        ensure_users(self.users)
        self.root_dir = Path(tempfile.mkdtemp(prefix="cacheproxy-realslurm-"))
        self._started = True
        try:
            self._configure()
            self._start_munged()
            if self.slurmdbd:
                self._start_slurmdbd()
            self._start_slurm()
            self._wait_ready()
        except BaseException:
            self.stop(reason="start failed")
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, reason: str = "") -> None:
        """Cancel this cluster's jobs, then stop exactly what it started, by pid.

        Idempotent. Daemons get SIGTERM, then SIGKILL after a grace period, and
        are reaped (no zombies left behind).
        """
        if not self._started:
            return
        self._started = False
        for d in self._daemons:  # a test may have left one paused
            if d.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    d.proc.send_signal(signal.SIGCONT)
        try:
            if any(d.name == "slurmctld" and d.proc.poll() is None for d in self._daemons):
                self._cancel_all_jobs()
        finally:
            for daemon in reversed(self._daemons):
                _terminate(daemon.proc)
            self._kill_marked_leftovers()
            self._daemons.clear()
            if not self.keep_dir and not os.environ.get("CACHEPROXY_REALSLURM_KEEP"):
                shutil.rmtree(self.root_dir, ignore_errors=True)

    def __enter__(self) -> RealSlurmCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pids(self) -> dict[str, int]:
        """Daemon name -> pid, for the daemons this instance started."""
        return {d.name: d.proc.pid for d in self._daemons}

    def exited(self) -> list[str]:
        """Names of our daemons that are no longer running."""
        return [d.name for d in self._daemons if d.proc.poll() is not None]

    def pause(self, name: str) -> None:
        """SIGSTOP one of our daemons: it keeps its sockets but answers nothing,
        like a controller stuck under load. Always :meth:`resume` it."""
        os.kill(self._daemon(name).proc.pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.kill(self._daemon(name).proc.pid, signal.SIGCONT)

    def _daemon(self, name: str) -> _Daemon:
        for d in self._daemons:
            if d.name == name and d.proc.poll() is None:
                return d
        raise ClusterError(f"{name} is not running")

    def mint_token(self, user: str, lifespan: int | None = None) -> str:
        """A JWT for ``user`` from ``scontrol token`` (no REST call mints one)."""
        out = self.run(
            ["scontrol", "token", f"username={user}", f"lifespan={lifespan or self.token_lifespan}"]
        )
        for line in out.splitlines():
            if line.startswith("SLURM_JWT="):
                return line.split("=", 1)[1].strip()
        raise ClusterError(f"scontrol token printed no SLURM_JWT: {out!r}")

    def run(self, argv: Sequence[str], timeout: float = 20.0) -> str:
        """Run a Slurm CLI tool against this cluster; its stdout, or ClusterError."""
        res = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if res.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}\n"
                + self.log_tails()
            )
        return res.stdout

    def request(
        self,
        method: str,
        path: str,
        user: str = "root",
        body: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """A direct request to slurmrestd (stdlib only, so the cluster module
        stays usable without the venv): status, headers (lower-case), body."""
        data = json.dumps(body).encode() if body is not None else None
        hdrs = self.headers(user) if user in self.tokens else {}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def log_tails(self, lines: int = 25) -> str:
        """The end of every daemon log: what a failure message needs."""
        out = []
        for path in sorted(self.root_dir.glob("log/*.log")):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(out)

    # -- setup ----------------------------------------------------------------
    def _configure(self) -> None:
        root = self.root_dir
        # slurmrestd runs as nobody and must read etc/; jobs need work/.
        root.chmod(0o755)
        for sub in ("etc", "log", "state", "spool", "run"):
            (root / sub).mkdir(mode=0o755)
        (root / "munge").mkdir(mode=0o700)
        self.work_dir.mkdir()
        self.work_dir.chmod(0o1777)
        key = root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        jwt_key = root / "state" / "jwt_hs256.key"
        jwt_key.write_bytes(secrets.token_bytes(32))
        jwt_key.chmod(0o600)
        ports = free_ports(5)
        self.ctld_port, self.slurmd_port, self.rest_port = ports[:3]
        if self.slurmdbd:
            self.dbd_port, self.mysql_port = ports[3:]
            accounting = [
                "AccountingStorageType=accounting_storage/slurmdbd",
                "AccountingStorageHost=127.0.0.1",
                f"AccountingStoragePort={self.dbd_port}",
                # Not a password here: the munge socket for talking to slurmdbd
                # (AuthInfo does not apply to that connection).
                f"AccountingStoragePass={self._munge_socket}",
            ]
        else:
            accounting = ["AccountingStorageType=accounting_storage/none"]
        host = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self._munge_socket}",
            "AuthAltTypes=auth/jwt",
            f"AuthAltParameters=jwt_key={jwt_key}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
            # No *LogFile: in the foreground the daemons log to stderr, which
            # _spawn() sends to log/<daemon>.log.
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            *accounting,
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "PrivateData=jobs",
            "ReturnToService=2",
            # Cancelled jobs stay listed this long: the tests look for them.
            "MinJobAge=600",
            "KillWait=2",
            "InactiveLimit=0",
            "MailProg=/bin/true",
            f"NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs={cpus} "
            "RealMemory=100 State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            *self.extra_conf,
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        self.conf.chmod(0o644)
        if self.slurmdbd:
            self._configure_slurmdbd(host, jwt_key)

    def _configure_slurmdbd(self, host: str, jwt_key: Path) -> None:
        root = self.root_dir
        self._db_password = secrets.token_hex(16)
        (root / "mysql").mkdir(mode=0o700)
        init = root / "mysql" / "init.sql"
        init.write_text(
            f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{self._db_password}';\n"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';\n"
        )
        init.chmod(0o600)
        dbd_conf = root / "etc" / "slurmdbd.conf"
        dbd_conf.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={self._munge_socket}",
                    "AuthAltTypes=auth/jwt",
                    f"AuthAltParameters=jwt_key={jwt_key}",
                    f"DbdHost={host}",
                    "DbdAddr=127.0.0.1",
                    f"DbdPort={self.dbd_port}",
                    "CommunicationParameters=NoInAddrAny",
                    "SlurmUser=root",
                    f"PidFile={root / 'run' / 'slurmdbd.pid'}",
                    "DebugLevel=info",
                    "PrivateData=jobs",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={self.mysql_port}",
                    "StorageUser=slurm",
                    f"StoragePass={self._db_password}",
                    "StorageLoc=slurm_acct_db",
                ]
            )
            + "\n"
        )
        # slurmdbd insists its config (it holds a password) is private.
        dbd_conf.chmod(0o600)

    @property
    def cluster_name(self) -> str:
        """Unique per instance: slurmdbd keys everything on it."""
        return "cp" + self.root_dir.name.rsplit("-", 1)[-1].lower().replace("_", "")[:8]

    @property
    def _munge_socket(self) -> Path:
        return self.root_dir / "munge" / "munge.socket"

    def _spawn(self, name: str, argv: list[str], user: str | None = None) -> _Daemon:
        log = self.root_dir / "log" / f"{name}.log"
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "SLURM_CONF": str(self.conf),
            ENV_MARKER: str(self.root_dir),
            "LANG": "C.UTF-8",
        }
        if user is not None:
            env["SLURM_JWT"] = "daemon"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root_dir,
                user=user,
                # slurmrestd also refuses the root group, supplementary too.
                group=pwd.getpwnam(user).pw_gid if user is not None else None,
                extra_groups=[] if user is not None else None,
                # Own session: a Ctrl-C in the terminal reaches only our
                # script, which then stops the daemons in order.
                start_new_session=True,
            )
        daemon = _Daemon(name, proc, log)
        self._daemons.append(daemon)
        return daemon

    def _start_munged(self) -> None:
        d = self.root_dir / "munge"
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self._munge_socket}",
                f"--key-file={d / 'munge.key'}",
                f"--pid-file={d / 'munged.pid'}",
                f"--seed-file={d / 'munged.seed'}",
                f"--log-file={self.root_dir / 'log' / 'munged.file.log'}",
                "--num-threads=4",
            ],
        )
        # The socket dir is 0700 (munged insists it be private to its owner)
        # but slurmrestd runs as nobody, so open the directory for traversal.
        self._wait("munged socket", lambda: self._munge_socket.exists(), daemon_names=("munged",))
        d.chmod(0o711)
        self._wait(
            "munged answering",
            lambda: (
                subprocess.run(
                    ["munge", "-n", f"--socket={self._munge_socket}"],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            ),
            daemon_names=("munged",),
        )

    def _start_slurmdbd(self) -> None:
        """A private mariadbd (own datadir, socket, port), then slurmdbd on it,
        then the accounts and users /slurmdb/ will show."""
        data = self.root_dir / "mysql" / "data"
        res = subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={data}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if res.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed: {res.stderr.strip()[-2000:]}")
        mysql = self.root_dir / "mysql"
        self._spawn(
            "mariadbd",
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={mysql / 'mysqld.sock'}",
                f"--pid-file={mysql / 'mysqld.pid'}",
                f"--port={self.mysql_port}",
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
                f"--init-file={mysql / 'init.sql'}",
            ],
        )
        self._wait("mariadbd", lambda: _port_open(self.mysql_port), daemon_names=("mariadbd",))
        self._spawn("slurmdbd", ["slurmdbd", "-D"])
        self._wait(
            "slurmdbd",
            lambda: self._quiet_ok(["sacctmgr", "-n", "-P", "show", "cluster"]),
            daemon_names=("mariadbd", "slurmdbd"),
        )
        self.run(["sacctmgr", "-i", "add", "cluster", self.cluster_name])
        self.run(["sacctmgr", "-i", "add", "account", "cpacct", f"cluster={self.cluster_name}"])
        if self.users:
            self.run(
                [
                    "sacctmgr",
                    "-i",
                    "add",
                    "user",
                    ",".join(self.users),
                    "account=cpacct",
                    f"cluster={self.cluster_name}",
                ]
            )

    def _start_slurm(self) -> None:
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)])
        self._spawn(
            "slurmrestd",
            [
                "slurmrestd",
                "-f",
                str(self.conf),
                "-a",
                "rest_auth/jwt",
                # With slurmdbd every plugin loads, the dbv* ones included.
                *([] if self.slurmdbd else ["-s", REST_PLUGINS]),
                f"127.0.0.1:{self.rest_port}",
            ],
            user=REST_USER,
        )

    def _wait_ready(self) -> None:
        # scontrol ping answers once slurmctld listens; only then can it mint.
        self._wait("slurmctld", lambda: self._quiet_ok(["scontrol", "ping"]))
        self.tokens = {"root": self.mint_token("root")}
        for user in self.users:
            self.tokens[user] = self.mint_token(user)

        def rest_up() -> bool:
            try:
                status, _, body = self.request("GET", f"/slurm/{API}/ping", timeout=2)
            except OSError:
                return False
            return status == 200 and json.loads(body)["pings"][0]["ping"] == "UP"

        self._wait("slurmrestd ping", rest_up)

        def node_idle() -> bool:
            status, _, body = self.request("GET", f"/slurm/{API}/nodes", timeout=2)
            if status != 200:
                return False
            nodes = json.loads(body)["nodes"]
            return bool(nodes) and nodes[0]["state"] in ("idle", "mixed", "allocated")

        # Jobs submitted before slurmd registers stay PENDING: wait for it.
        self._wait("node registered", node_idle)

    def _quiet_ok(self, argv: Sequence[str]) -> bool:
        try:
            return (
                subprocess.run(
                    list(argv), capture_output=True, env=self.env(), timeout=5, check=False
                ).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def _wait(
        self,
        what: str,
        ready: Callable[[], bool],
        daemon_names: Sequence[str] | None = None,
        interval: float = 0.1,
    ) -> None:
        """Poll ``ready()`` until true; fail fast if one of our daemons died."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            for d in self._daemons:
                if (daemon_names is None or d.name in daemon_names) and d.proc.poll() is not None:
                    raise ClusterError(
                        f"{d.name} exited with {d.proc.returncode} while waiting for {what}\n"
                        + self.log_tails()
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"timed out after {self.start_timeout:.0f}s waiting for {what}\n"
                    + self.log_tails()
                )
            time.sleep(interval)

    # -- teardown -------------------------------------------------------------
    def _cancel_all_jobs(self) -> None:
        """Cancel every job and wait for them to end, so no slurmstepd or job
        process outlives the cluster."""
        try:
            ids = self.run(["squeue", "-h", "-o", "%A", "-t", "all"], timeout=10).split()
            if not ids:
                return
            subprocess.run(
                ["scancel", *ids], capture_output=True, env=self.env(), timeout=10, check=False
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                left = self.run(["squeue", "-h", "-o", "%A", "-t", "PD,R,CG,S"], timeout=10)
                if not left.split():
                    return
                time.sleep(0.2)
        except (ClusterError, subprocess.TimeoutExpired):
            pass  # best effort: the marker sweep below still catches stepds

    def _kill_marked_leftovers(self) -> None:
        """SIGKILL any process carrying this cluster's private env marker."""
        marker = f"{ENV_MARKER}={self.root_dir}".encode()
        me = os.getpid()
        for pid in _marked_pids(marker):
            if pid != me:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _marked_pids(marker: bytes) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            yield int(entry.name)


def _terminate(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, wait, SIGKILL, reap: one process we started, by pid."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)  # a paused daemon must see its SIGTERM
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)
