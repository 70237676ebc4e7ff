"""Many streams at once (issue 23): a thousand against one real `tracker api` on its default
settings, each told of a change, while plain GETs and held waits are answered as without them."""

from __future__ import annotations

import pathlib
import resource
import selectors
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.live_api import LiveApi, add_users, running_api
from tests.metrics_text import parse, value
from tracker.events import new_event
from tracker.store import JobStore, make_engine, open_job_store

STREAMS = 1000
DEADLINE_S = 60.0


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    engine = make_engine(database_url)
    yield open_job_store(engine)
    engine.dispose()


@pytest.fixture
def live(database_url: str, tmp_path: pathlib.Path) -> Iterator[LiveApi]:
    add_users(database_url, ops="operations")
    with running_api(database_url, tmp_path) as api:
        yield api


def _enough_descriptors(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))


def _read_until(socks: list[socket.socket], buffers: list[bytearray], done: Callable[[bytes], bool]) -> list[int]:
    """Read every socket until ``done`` says so of what it has received, or DEADLINE_S passes;
    the indexes of those not done."""
    selector = selectors.DefaultSelector()
    waiting = {index for index, buffer in enumerate(buffers) if not done(bytes(buffer))}
    for index in waiting:
        selector.register(socks[index], selectors.EVENT_READ, index)
    deadline = time.monotonic() + DEADLINE_S
    while waiting and time.monotonic() < deadline:
        for key, _mask in selector.select(1.0):
            index = key.data
            data = socks[index].recv(65536)
            buffers[index] += data
            if done(bytes(buffers[index])) or not data:
                selector.unregister(socks[index])
                waiting.discard(index)
    selector.close()
    return sorted(waiting)


def test_a_thousand_streams_at_once_each_hear_of_a_change_while_gets_and_waits_are_answered(
    live: LiveApi, store: JobStore
) -> None:
    _enough_descriptors(STREAMS + 512)
    token = live.login("ops")
    request = (
        f"GET /api/5.0/async_status HTTP/1.1\r\nHost: {live.host}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    socks: list[socket.socket] = []
    try:
        for _ in range(STREAMS):
            sock = socket.create_connection((live.host, live.port), timeout=10)
            sock.sendall(request)
            socks.append(sock)
        buffers = [bytearray() for _ in socks]
        # every one answered 200 and sent its position (the headers, then `id: <cursor>`)
        not_open = _read_until(socks, buffers, lambda got: b"\r\n\r\n" in got and b"id: " in got)
        assert not not_open, f"{len(not_open)} streams not open: {bytes(buffers[not_open[0]])[:300]!r}"
        assert all(buffer.startswith(b"HTTP/1.1 200 ") for buffer in buffers)

        # plain GETs and a held wait are answered while they are all open
        bearer = {"Authorization": f"Bearer {token}"}
        job = store.create_job("Deploying.")
        started = time.monotonic()
        answer = live.request("GET", f"/api/5.0/async_status/{job.id}", headers=bearer)
        assert answer.status == 200
        assert time.monotonic() - started < 1.0
        waited = live.request("GET", f"/api/5.0/async_status/{job.id}", headers={**bearer, "Prefer": "wait=1"})
        assert waited.status == 200
        assert waited.headers.get("preference-applied") == "wait=1"  # held, not refused for the streams

        # one change: every stream tells it
        seen = [len(buffer) for buffer in buffers]
        store.apply([new_event(job.id, "progress", "half way", progress=50)])
        marker = b'"message":"half way"'
        deaf = _read_until(socks, buffers, lambda got: b"event: job" in got and marker in got)
        assert not deaf, f"{len(deaf)} streams did not tell the change: {bytes(buffers[deaf[0]])[seen[deaf[0]] :]!r}"
        assert live.request("GET", "/api/5.0/ping").status == 200
    finally:
        for sock in socks:
            sock.close()


def test_streams_past_their_cap_are_answered_503_and_a_wait_is_still_held(
    database_url: str, tmp_path: pathlib.Path, store: JobStore
) -> None:
    add_users(database_url, ops="operations")
    with running_api(database_url, tmp_path, workers="1", api_max_streams="2") as api:
        bearer = {"Authorization": f"Bearer {api.login('ops')}"}
        request = (
            f"GET /api/5.0/async_status HTTP/1.1\r\nHost: {api.host}\r\nAuthorization: {bearer['Authorization']}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        socks = [socket.create_connection((api.host, api.port), timeout=10) for _ in range(2)]
        try:
            for sock in socks:
                sock.sendall(request)
            buffers = [bytearray() for _ in socks]
            assert not _read_until(socks, buffers, lambda got: b"id: " in got)
            refused = api.request("GET", "/api/5.0/async_status", headers={**bearer, "Accept": "text/event-stream"})
            assert refused.status == 503
            assert refused.headers.get("retry-after") == "5"
            samples = parse(api.request("GET", "/metrics").body.decode())
            assert value(samples, "tracker_streams_open") == 2
            assert value(samples, "tracker_streams_refused_total") == 1
            job = store.create_job("Deploying.")
            waited = api.request("GET", f"/api/5.0/async_status/{job.id}", headers={**bearer, "Prefer": "wait=1"})
            assert waited.headers.get("preference-applied") == "wait=1"
        finally:
            for sock in socks:
                sock.close()
        store.apply([new_event(job.id, "succeeded", "Done.")])
        deadline = time.monotonic() + 5
        while True:  # the pump lets the closed ones go: there is room again
            path = f"/api/5.0/async_status/{job.id}"
            again = api.request("GET", path, headers={**bearer, "Accept": "text/event-stream"})
            if again.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert again.status == 200  # the finished job's stream: its row, then the end
        samples = parse(api.request("GET", "/metrics").body.decode())
        assert value(samples, "tracker_streams_open") == 0  # every stream ended, counted down
