"""Slow clients (SPEC §7): 50 connections stuck mid-headers or mid-body delay no one else's answer
beyond a second, and are dropped (408) once the read timeout has passed. ``tracker api`` alone, on
its default settings."""

from __future__ import annotations

import http.client
import json
import pathlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e.live_api import LiveApi, add_users, running_api
from tracker.config import Settings
from tracker.store import make_engine, migrate

PROMPT_S = 1.0  # SPEC §7: no one else's answer delayed beyond a second
READ_TIMEOUT_S = Settings().api_read_timeout_s  # the default: the bound this test checks
SLOW_HEADERS = 25
SLOW_BODIES = 25
TIMED_OUT = f"the request was not received within {READ_TIMEOUT_S:g} seconds"


@pytest.fixture
def live(tmp_path: pathlib.Path) -> Iterator[LiveApi]:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    add_users(url, ops="operations")
    with running_api(url, tmp_path) as api:
        yield api


class SlowClient:
    """A connection that sends the start of a request and then nothing (or a byte now and then)."""

    def __init__(self, live: LiveApi, start: bytes, trickle: bool = False) -> None:
        self.sock = socket.create_connection((live.host, live.port), timeout=READ_TIMEOUT_S + 20)
        self.sock.sendall(start)
        self.stalled_at = time.monotonic()
        self.closed_at: float | None = None
        self.received = b""
        self._trickle = trickle
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._trickle:  # a byte a second: never idle, never done
            self.sock.settimeout(1.0)
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except TimeoutError:
                    self.sock.sendall(b"a")
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                self.received += chunk
        else:
            while chunk := self._recv():
                self.received += chunk
        self.closed_at = time.monotonic()
        self.sock.close()

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def test_fifty_slow_clients_delay_no_one_and_are_dropped_after_the_read_timeout(live: LiveApi) -> None:
    token = live.login("ops")
    bearer = {"Authorization": f"Bearer {token}"}
    created = live.request("POST", "/api/5.0/async_status", headers=bearer)
    job_path = created.headers["location"]

    mid_headers = b"GET " + job_path.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: a"
    login = json.dumps({"u": "ops", "p": "x" * 80}).encode()
    mid_body = (
        b"POST /api/5.0/user/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(login)}\r\n\r\n".encode()
        + login[:20]
    )
    slow = [SlowClient(live, mid_headers, trickle=n < 3) for n in range(SLOW_HEADERS)]
    slow += [SlowClient(live, mid_body) for _ in range(SLOW_BODIES)]

    # Everyone else: GETs back to back, on new connections and on one kept alive, all the while.
    latencies = []
    kept = http.client.HTTPConnection(live.host, live.port, timeout=10)
    until = time.monotonic() + 4.0
    while time.monotonic() < until:
        for fresh in (True, False):
            started = time.monotonic()
            if fresh:
                status = live.request("GET", job_path, headers=bearer).status
            else:
                kept.request("GET", job_path, headers=bearer)
                response = kept.getresponse()
                response.read()
                status = response.status
            latencies.append(time.monotonic() - started)
            assert status == 200
    kept.close()
    assert max(latencies) < PROMPT_S, max(latencies)
    assert not [client for client in slow if client.closed_at is not None], "dropped before the read timeout"

    for client in slow:
        client.join(READ_TIMEOUT_S + 10)
    for client in slow:
        assert client.closed_at is not None, "a slow client is still connected"
        # Dropped once the read timeout has passed, not much later: the thread it held is free again.
        assert READ_TIMEOUT_S - 0.5 <= client.closed_at - client.stalled_at < READ_TIMEOUT_S + 3.0
        head, _, body = client.received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), client.received
        assert json.loads(body) == {"alerts": [{"text": TIMED_OUT, "level": "error"}]}
    # And the API goes on as before.
    assert live.request("GET", job_path, headers=bearer).status == 200
    assert "Traceback" not in live.log()
