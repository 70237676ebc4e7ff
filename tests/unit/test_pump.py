"""The stream pump (api/pump.py) on socket pairs: frames to every stream, slow clients dropped without
stalling the others, sessions ended, keep-alives; and the server's socket hand-off."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from api.pump import MAX_UNSENT, Opened, Pump
from api.server import DeadlineSocket
from tracker import listing
from tracker.store.cursor import Changes

BIG = b"x" * 60_000


class Source:
    """Changes as the pump reads them: one more position per ring, rendered as ``frame``."""

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.position = 0
        self.reads = 0
        self.stopping = False

    def read(self, cursor: int, _query: listing.JobQuery) -> Changes:
        self.reads += 1
        return Changes((), self.position)

    def render(self, changes: Changes, _until_final: bool) -> tuple[list[bytes], bool, bool]:
        return ([self.frame] if changes.position else []), False, False


@pytest.fixture
def source() -> Source:
    return Source(b"data: change\n\n")


@pytest.fixture
def pump(source: Source) -> Iterator[Pump]:
    pump = Pump(source.read, source.render, lambda: True, lambda: source.stopping, b": ka\n\n", 1.0, 0.05)
    yield pump
    source.stopping = True
    pump.ring()


def _opened(ended: threading.Event | None = None, chunked: bool = False) -> tuple[Opened, socket.socket, list[str]]:
    server, client = socket.socketpair()
    released: list[str] = []
    release = contextlib.ExitStack()
    release.callback(released.append, "released")
    check = ended.is_set if ended is not None else (lambda: False)
    return Opened(server, listing.JobQuery(), 0, False, chunked, check, release), client, released


def _read_until(client: socket.socket, wanted: bytes, timeout_s: float = 5.0) -> bytes:
    client.settimeout(timeout_s)
    got = b""
    while wanted not in got:
        data = client.recv(1 << 20)
        if not data:
            break
        got += data
    return got


def test_each_change_goes_to_every_stream_in_one_read(pump: Pump, source: Source) -> None:
    streams = [_opened(chunked=n % 2 == 0) for n in range(50)]
    for opened, _client, _released in streams:
        pump.adopt(opened)
    time.sleep(0.2)
    reads = source.reads
    source.position = 1
    pump.ring()
    for n, (_opened_stream, client, _released) in enumerate(streams):
        expected = b"E\r\ndata: change\n\n\r\n" if n % 2 == 0 else b"data: change\n\n"
        assert expected in _read_until(client, expected)
    assert source.reads - reads == 1  # the same cursor and filters: one read for all


def test_a_client_that_reads_nothing_is_dropped_and_the_others_go_on(source: Source) -> None:
    source.frame = BIG
    pump = Pump(source.read, source.render, lambda: True, lambda: source.stopping, b": ka\n\n", 60.0, 0.05)
    slow, slow_client, slow_released = _opened()
    slow_client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fast, fast_client, fast_released = _opened()
    pump.adopt(slow)
    pump.adopt(fast)
    try:
        for n in range(1, 2 * MAX_UNSENT // len(BIG) + 40):
            source.position = n
            pump.ring()
            assert len(_read_until(fast_client, BIG)) >= len(BIG)  # never held up by the slow one
        deadline = time.monotonic() + 5
        while not slow_released and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow_released == ["released"]
        assert fast_released == []
    finally:
        source.stopping = True
        pump.ring()


def test_a_stream_whose_session_ends_is_ended_within_a_second_or_two(pump: Pump) -> None:
    ended = threading.Event()
    opened, client, released = _opened(ended, chunked=True)
    pump.adopt(opened)
    ended.set()
    got = _read_until(client, b"0\r\n\r\n", 5.0)
    assert got.endswith(b"0\r\n\r\n")  # the response's end, then the connection's
    assert client.recv(10) == b""
    assert released == ["released"]


def test_an_idle_stream_gets_its_keep_alive(pump: Pump) -> None:
    opened, client, _released = _opened()
    pump.adopt(opened)
    started = time.monotonic()
    assert _read_until(client, b": ka\n\n", 4.0) == b": ka\n\n"
    assert 0.9 <= time.monotonic() - started < 3.0


def test_a_client_that_goes_is_let_go(pump: Pump) -> None:
    opened, client, released = _opened()
    pump.adopt(opened)
    client.close()
    deadline = time.monotonic() + 3
    while not released and time.monotonic() < deadline:
        time.sleep(0.02)
    assert released == ["released"]
    assert len(pump) == 0


def test_a_handed_off_socket_is_the_pumps_and_gunicorn_closes_only_its_copy() -> None:
    server, client = socket.socketpair()
    theirs = DeadlineSocket.taking_over(server)
    ours = theirs.hand_off()
    theirs.sendall(b"0\r\n\r\n")  # gunicorn's end of the response: not sent
    theirs.shutdown(socket.SHUT_WR)
    assert theirs.recv(10) == b""
    theirs.close()
    ours.sendall(b"still here")
    client.settimeout(2)
    assert client.recv(100) == b"still here"
    ours.close()
    assert client.recv(100) == b""


def test_streams_adopted_from_many_threads_at_once_all_hear_the_next_change(pump: Pump, source: Source) -> None:
    # Adopting rings the bell from every thread at once, racing the pump's drain of it: the bell
    # must still ring for the change after.
    clients: list[socket.socket] = []
    lock = threading.Lock()

    def adopt_some() -> None:
        for _ in range(25):
            opened, client, _released = _opened()
            with lock:
                clients.append(client)
            pump.adopt(opened)

    threads = [threading.Thread(target=adopt_some) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(1, 4):
        time.sleep(0.1)
        source.frame = b"data: change %d\n\n" % n
        source.position = n
        pump.ring()
        for client in clients:
            assert source.frame in _read_until(client, source.frame, 3.0)
    for client in clients:
        client.close()
