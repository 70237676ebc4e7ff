"""A real ``tracker api`` process (gunicorn, two workers) on a free local port, for tests over HTTP."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import argon2

from bench.processes import environment, free_port
from tests.conftest import TEST_SECRET
from tracker import auth
from tracker.config import Settings
from tracker.store import make_engine
from tracker.users import UserStore

PASSWORD = "correct horse battery staple"
# Cheap hashes keep logins quick; the server verifies with the parameters stored in each hash.
CHEAP_PASSWORDS = auth.Passwords(argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15
_BURST = 8  # connections opened at once while looking for every worker


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def json(self) -> object:
        return json.loads(self.body)


@dataclasses.dataclass
class LiveApi:
    database_url: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> Answer:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Answer(response.status, _headers(response.getheaders()), response.read())
        finally:
            connection.close()

    def send_raw(self, data: bytes) -> Answer:
        """Send bytes no HTTP client would, and read the one answer."""
        with socket.create_connection((self.host, self.port), timeout=10) as sock:
            sock.sendall(data)
            response = http.client.HTTPResponse(sock)
            response.begin()
            return Answer(response.status, _headers(response.getheaders()), response.read())

    def login(self, username: str, password: str = PASSWORD) -> str:
        """The access token the login cookies carry; fails the test if login does not answer 200."""
        answer = self.request(
            "POST",
            "/api/5.0/user/login",
            json.dumps({"u": username, "p": password}).encode(),
            {"Content-Type": "application/json"},
        )
        assert answer.status == 200, answer
        return answer.headers["set-cookie"].split("access_token=", 1)[1].split(";", 1)[0]

    def worker_pids(self) -> set[int]:
        """The pids of the gunicorn workers (the children of ``tracker api``)."""
        children = set()
        for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == self.process.pid:
                children.add(int(stat.parent.name))
        return children

    def worker_serving(self, connection: http.client.HTTPConnection) -> int | None:
        """The pid of the worker holding the server side of ``connection`` (an open, answered one)."""
        assert connection.sock is not None
        client_port = connection.sock.getsockname()[1]
        wanted = f":{self.port:04X} "
        inodes = set()
        for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(wanted.strip()) and fields[2].endswith(f":{client_port:04X}"):
                inodes.add(f"socket:[{fields[9]}]")
        for pid in self.worker_pids():
            for fd in pathlib.Path(f"/proc/{pid}/fd").glob("*"):
                try:
                    if os.readlink(fd) in inodes:
                        return pid
                except OSError:
                    continue
        return None

    def connection_to_each_worker(
        self, warm: Callable[[http.client.HTTPConnection], None], workers: int, within_s: float = START_TIMEOUT_S
    ) -> dict[int, http.client.HTTPConnection]:
        """A kept-alive connection to each of the ``workers`` workers, by pid, each already used by
        ``warm`` (which must leave it open: a request answered in full). Connections are opened in
        bursts, since the kernel hands one at a time to whichever worker waited last. Fails if
        fewer workers run, or some has taken none, after ``within_s`` (one still starting takes none)."""
        deadline = time.monotonic() + within_s
        # The API answers once one worker does: the master may not have forked the others yet.
        while len(pids := self.worker_pids()) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pids) == workers, f"workers {sorted(pids)} running, not {workers}"
        found: dict[int, http.client.HTTPConnection] = {}

        def opened() -> http.client.HTTPConnection:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
            warm(connection)
            return connection

        with concurrent.futures.ThreadPoolExecutor(_BURST) as pool:
            while set(found) != pids and time.monotonic() < deadline:
                for connection in list(pool.map(lambda _: opened(), range(_BURST))):
                    pid = self.worker_serving(connection)
                    if pid is not None and pid not in found:
                        found[pid] = connection
                    else:
                        connection.close()
        assert set(found) == pids, f"connections reached workers {sorted(found)} of {sorted(pids)}"
        return found


def exchange(connection: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str]) -> Answer:
    """One request on a kept-alive connection, its answer read in full."""
    connection.request(method, path, headers=headers)
    response = connection.getresponse()
    return Answer(response.status, _headers(response.getheaders()), response.read())


def _headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Headers by lower-case name; a repeated one (Set-Cookie) joined with ", "."""
    joined: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


def add_users(database_url: str, **roles: str) -> None:
    """Create users named by the keywords, with their roles, all with PASSWORD."""
    engine = make_engine(database_url)
    try:
        store = UserStore(engine, CHEAP_PASSWORDS)
        for name, role in roles.items():
            store.add(name, role, PASSWORD)
    finally:
        engine.dispose()


@contextlib.contextmanager
def running_api(database_url: str, workdir: pathlib.Path, **settings: str) -> Iterator[LiveApi]:
    """``tracker api`` on a migrated database until the block ends, then SIGTERM.

    ``settings`` are Settings fields (``login_max_failures="20"``), passed as TRACKER_* variables
    (``log_level`` too).
    """
    configured = Settings(database_url=database_url, secret=TEST_SECRET, secret_file=str(workdir / "secret"))
    env = environment(
        configured,
        **{"TRACKER_LOG_LEVEL": "WARNING", **{f"TRACKER_{name.upper()}": value for name, value in settings.items()}},
    )
    for attempt in range(3):  # another process may take the port between our probe and gunicorn's bind
        port = free_port()
        log_path = workdir / f"api-{port}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tracker.cli", "api"],
                env={**env, "TRACKER_BIND": f"127.0.0.1:{port}"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        api = LiveApi(database_url, "127.0.0.1", port, process, log_path)
        try:
            if _wait_until_serving(api):
                break
        except BaseException:
            _stop(process)
            raise
        _stop(process)
        if "Address already in use" not in api.log() or attempt == 2:
            raise AssertionError(f"tracker api did not start:\n{api.log()}")
    try:
        yield api
    finally:
        _stop(api.process)


def _wait_until_serving(api: LiveApi) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if api.process.poll() is not None:
            return False
        try:
            if api.request("GET", "/api/5.0/ping").status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
