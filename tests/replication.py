"""PostgreSQL servers of the tests' own on this machine: a primary and a streaming standby made from it,
for the failover tests (SPEC §14), and a lone server for the tests that start processes before it.

They are the test run's own: started from the installed PostgreSQL (``initdb``, ``pg_basebackup
-R``, ``postgres``, ``pg_ctl promote``), each on a port that was free and with its data, socket
and log in a temporary directory, and removed afterwards (killed, the directory deleted) however
the tests ended. Nothing here addresses the machine's own server: every command names one of these
data directories or ports, and the machine's port 5432 is never used.

Run as root, the servers and their tools run as the ``postgres`` user (PostgreSQL refuses to run
as root), which owns their directory; run as anyone else, as that user. Each server is its own
process group, so that killing it (SIGKILL, as a crashed host would) takes every backend with it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from bench.processes import free_port
from tests.accounts import ServiceAccount

_VERSIONS = pathlib.Path("/usr/lib/postgresql")
_MACHINE_PORT = 5432
_START_TIMEOUT_S = 60.0
_TOOL_TIMEOUT_S = 120.0


class ServersUnavailable(RuntimeError):
    """The servers cannot be run here (no PostgreSQL installed, or one would not come up)."""


def server_binaries() -> pathlib.Path:
    """The newest installed PostgreSQL's bin directory (initdb, postgres, pg_ctl, pg_basebackup)."""
    found = sorted(
        (folder for folder in _VERSIONS.glob("*/bin") if (folder / "initdb").is_file()),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb:
        return pathlib.Path(initdb).resolve().parent
    raise ServersUnavailable(
        "PostgreSQL's server programs are not installed (no /usr/lib/postgresql/*/bin/initdb, no initdb on "
        "PATH): the failover tests start servers of their own; install them with apt-get install postgresql"
    )


def _account() -> ServiceAccount:
    try:
        return ServiceAccount("postgres")
    except LookupError as exc:
        raise ServersUnavailable(str(exc)) from None


def _free_port() -> int:
    while (port := free_port()) == _MACHINE_PORT:
        pass
    return port


def _environment() -> dict[str, str]:
    """The tools' environment: none of the caller's PG* settings (they could name another server)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")} | {"LC_ALL": "C"}


class Server:
    """One PostgreSQL server of the tests' own: its data directory, port and process."""

    def __init__(self, name: str, home: pathlib.Path, binaries: pathlib.Path, account: ServiceAccount) -> None:
        self.name = name
        self.port = _free_port()
        self.data = home / name
        self._home = home
        self._binaries = binaries
        self._account = account
        self._process: subprocess.Popen[bytes] | None = None
        self._settings: dict[str, str] = {}

    @property
    def log_path(self) -> pathlib.Path:
        return self._home / f"{self.name}.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, tool: str, *args: str) -> str:
        """One of the server's programs (``pg_ctl``, ``pg_basebackup`` …) as the servers' user; its output."""
        done = subprocess.run(
            [str(self._binaries / tool), *args],
            env=_environment(),
            cwd=self._home,
            capture_output=True,
            text=True,
            timeout=_TOOL_TIMEOUT_S,
            check=False,
            **self._account.popen_args(),
        )
        if done.returncode != 0:
            raise ServersUnavailable(f"{tool} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def init(self) -> None:
        """A new, empty cluster in the data directory (trust authentication, on 127.0.0.1 only)."""
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def copy_of(self, primary: Server) -> None:
        """Make this a standby of ``primary``: a base backup with ``-R`` (standby.signal, primary_conninfo)."""
        self.run(
            "pg_basebackup",
            "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(self.data), "-R", "-X", "stream", "-c", "fast", "--no-sync",
        )  # fmt: skip

    def start(self, **settings: str) -> float:
        """Start ``postgres`` on this data directory with ``settings`` (``-c name=value``); the
        seconds until it took a connection."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._settings = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self._home),
            "max_connections": "200",
            "logging_collector": "off",
            "log_line_prefix": f"%m {self.name}[%p] ",
            **settings,
        }
        options = [part for name, value in self._settings.items() for part in ("-c", f"{name}={value}")]
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self._binaries / "postgres"), "-D", str(self.data), *options],
                env=_environment(),
                cwd=self._home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a process group of its own: kill() takes every backend
                **self._account.popen_args(),
            )
        self.wait_answering()
        return time.monotonic() - started

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def answering(self) -> bool:
        try:
            with psycopg.connect(
                host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=2
            ):
                return True
        except psycopg.Error:
            return False

    def wait_answering(self, timeout: float = _START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answering():
                return
            if self._process is not None and not self.running:
                raise ServersUnavailable(f"{self.name} exited with {self._process.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        raise ServersUnavailable(f"{self.name} did not answer on port {self.port} within {timeout} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the server and every backend at once, as a crashed host would: no goodbye to anyone."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(30)

    def stop(self) -> None:
        """A fast shutdown (SIGINT: clients disconnected, a clean checkpoint)."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def promote(self) -> None:
        """``pg_ctl promote``, as a failover manager would: the standby ends recovery and takes writes."""
        self.run("pg_ctl", "promote", "-D", str(self.data), "-w", "-t", "60")

    def execute(
        self, sql: str, params: Sequence[object] | None = None, database: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit on this server; its rows (none for a command)."""
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=database, autocommit=True, connect_timeout=5
        ) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return f"--- {self.log_path.name} ---\n" + "\n".join(
            self.log_path.read_text(errors="replace").splitlines()[-lines:]
        )


class Pair:
    """A primary and its standby; ``url(database)`` names both, as TRACKER_DATABASE_URL would."""

    def __init__(self, primary: Server, standby: Server, synchronous: bool) -> None:
        self.primary = primary
        self.standby = standby
        self.synchronous = synchronous

    def url(self, database: str) -> str:
        """SQLAlchemy's multi-host form: both hosts, and only a server that takes writes will do."""
        hosts = "&".join(f"host=127.0.0.1:{server.port}" for server in (self.primary, self.standby))
        return f"postgresql+psycopg://postgres@/{database}?{hosts}&target_session_attrs=read-write"

    def create_database(self, name: str) -> None:
        """A new database on the primary, and, when synchronous, on the standby once the primary's commit returned."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.primary.execute(f'CREATE DATABASE "{name}"')
        self.wait_replayed()

    def wait_streaming(self, timeout: float = _START_TIMEOUT_S) -> None:
        """Block until the standby streams from the primary, and, when synchronous, is its
        synchronous standby (the setting is the primary's own, made now: ALTER SYSTEM)."""
        deadline = time.monotonic() + timeout
        while (state := self.replication()) is None or state[0] != "streaming":
            if time.monotonic() > deadline:
                raise ServersUnavailable(f"the standby is not streaming: {state}\n{self.standby.tail()}")
            time.sleep(0.1)
        if self.synchronous:
            self.primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            self.primary.execute("SELECT pg_reload_conf()")
            while (state := self.replication()) != ("streaming", "sync"):
                if time.monotonic() > deadline:
                    raise ServersUnavailable(f"the standby is not synchronous: {state}")
                time.sleep(0.1)

    def fail_over(self, detection_s: float) -> float:
        """Kill the primary (SIGKILL, every process of it), wait ``detection_s`` (a failover
        manager's time to decide), promote the standby; the seconds from the kill to the end of the
        promotion. The promoted server is the primary from then on; the lost one is the standby
        (not running) until ``rebuild_standby``."""
        lost, promoted = self.primary, self.standby
        lost.kill()
        killed_at = time.monotonic()
        time.sleep(detection_s)
        promoted.promote()
        self.primary, self.standby = promoted, lost
        return time.monotonic() - killed_at

    def rebuild_standby(self) -> None:
        """After a failover: the lost server's data wiped, and made a standby of the new primary
        again, on its own port (so the same URL names both), synchronous as the pair was."""
        lost = self.standby
        if lost.running:
            raise RuntimeError("the standby to rebuild is running")
        shutil.rmtree(lost.data)
        lost.copy_of(self.primary)
        lost.start(hot_standby="on")
        self.wait_streaming()

    def replication(self) -> tuple[str, str] | None:
        """The standby's (state, sync_state) as the primary sees it, or None while it is not connected."""
        rows = self.primary.execute("SELECT state, sync_state FROM pg_stat_replication")
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def wait_replayed(self, timeout: float = 60.0) -> None:
        """Block until the standby has replayed everything the primary has written so far."""
        [(target,)] = self.primary.execute("SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            [(behind,)] = self.standby.execute(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn()) > 0", (target,)
            )
            if not behind:
                return
            time.sleep(0.05)
        raise ServersUnavailable(f"the standby did not replay up to {target} within {timeout} s")

    def remove(self) -> None:
        for server in (self.primary, self.standby):
            server.kill()


@contextlib.contextmanager
def scratch_home() -> Iterator[tuple[pathlib.Path, pathlib.Path, ServiceAccount]]:
    """A temporary directory the servers' user owns, the binaries and that user; deleted on leaving."""
    binaries = server_binaries()
    account = _account()
    home = pathlib.Path(tempfile.mkdtemp(prefix=f"tracker-pg-{uuid.uuid4().hex[:6]}-"))
    account.own(home)
    try:
        yield home, binaries, account
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def running_pair(*, synchronous: bool) -> Iterator[Pair]:
    """A primary and a streaming standby made from it, synchronous (``synchronous_standby_names``
    ``*`` on the primary: a commit returns once the standby has flushed it) or not; both removed
    on leaving, however.

    The setting is the primary's own (ALTER SYSTEM after the base backup), so a promoted standby
    does not wait for a standby it does not have.
    """
    with scratch_home() as (home, binaries, account):
        pair = Pair(Server("primary", home, binaries, account), Server("standby", home, binaries, account), synchronous)
        try:
            pair.primary.init()
            pair.primary.start()
            pair.standby.copy_of(pair.primary)
            pair.standby.start(hot_standby="on")
            pair.wait_streaming()
            yield pair
        except ServersUnavailable as exc:
            raise ServersUnavailable(f"{exc}\n{pair.tail()}") from None
        finally:
            pair.remove()


@contextlib.contextmanager
def lone_server() -> Iterator[Server]:
    """One server of the tests' own, initialised, not started (the test starts it); removed on leaving."""
    with scratch_home() as (home, binaries, account):
        server = Server("lone", home, binaries, account)
        try:
            server.init()
            yield server
        finally:
            server.kill()


def main() -> None:
    """``python -m tests.replication [--asynchronous]``: a pair of this module's own in the
    foreground (for a benchmark or a trial by hand), its URLs printed, removed on Ctrl-C or SIGTERM."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tests.replication", description=main.__doc__)
    parser.add_argument("--asynchronous", action="store_true", help="no synchronous standby")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with running_pair(synchronous=not args.asynchronous) as pair:
        print(f"primary  {pair.primary.url()}  (data {pair.primary.data})", flush=True)
        print(f"standby  {pair.standby.url()}  (data {pair.standby.data})", flush=True)
        print(f"both     {pair.url('DATABASE')}", flush=True)
        print(f"replication (state, sync_state): {pair.replication()}; Ctrl-C removes both", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
