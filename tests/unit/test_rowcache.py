"""The row cache's bookkeeping against a fake listener connection: bounds, expiry, what drops what."""

from __future__ import annotations

import datetime as dt
import queue
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from api.rowcache import RowCache
from tracker.errors import JobNotFound
from tracker.model import Job

START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


class FakeConnection:
    """Enough of a psycopg connection for the listener: LISTEN, the trigger check, notifications."""

    def __init__(self, triggers: int = 3) -> None:
        self.notifications: queue.Queue[str] = queue.Queue()
        self.triggers = triggers
        self.info = SimpleNamespace(backend_pid=4242)

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def execute(self, query: str, _params: object = None) -> Any:
        # The trigger check counts the triggers; the bulk reads of rows find none here.
        return SimpleNamespace(fetchone=lambda: (self.triggers,), fetchall=list)

    def notifies(self, timeout: float) -> Iterator[SimpleNamespace]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                payload = self.notifications.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            yield SimpleNamespace(payload=payload)


def wait_until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.002)


class Loads:
    """A fake database: rows by id, counting reads."""

    def __init__(self) -> None:
        self.rows: dict[int, Job] = {}
        self.count = 0

    def __call__(self, job_id: int) -> Job:
        self.count += 1
        if job_id not in self.rows:
            raise JobNotFound(job_id)
        return self.rows[job_id]

    def put(self, job_id: int, message: str) -> None:
        self.rows[job_id] = Job(job_id, "PENDING", START, None, message)


@pytest.fixture
def connection() -> FakeConnection:
    return FakeConnection()


def listening_cache(connection: FakeConnection, **options: Any) -> RowCache:
    cache = RowCache(lambda: connection, check_s=0.05, **options)  # type: ignore[arg-type,return-value]
    with pytest.raises(JobNotFound):
        cache.get(0, Loads())
    wait_until(lambda: cache.listening, "listening")
    return cache


def test_hits_misses_and_never_a_remembered_miss(connection: FakeConnection) -> None:
    cache, loads = listening_cache(connection), Loads()
    try:
        for _ in range(2):
            with pytest.raises(JobNotFound):
                cache.get(7, loads)
        assert loads.count == 2
        loads.put(7, "now here")
        assert cache.get(7, loads).message == "now here"
        assert cache.get(7, loads).message == "now here"
        assert loads.count == 3
    finally:
        cache.close()


@pytest.mark.parametrize(
    "payload, dropped",
    [
        ("2", {2}),
        ("1,3", {1, 3}),
        ("99", set()),
        ("*", {1, 2, 3}),
        ("1,oops", {1, 2, 3}),
        ("", {1, 2, 3}),
    ],
)
def test_a_notification_drops_its_rows_and_anything_unreadable_drops_all(
    connection: FakeConnection, payload: str, dropped: set[int]
) -> None:
    cache, loads = listening_cache(connection), Loads()
    try:
        for job_id in (1, 2, 3):
            loads.put(job_id, "x")
            cache.get(job_id, loads)
        seen = cache.invalidations
        connection.notifications.put(payload)
        wait_until(lambda: cache.invalidations > seen, "the notification is applied")
        assert {job_id for job_id in (1, 2, 3) if job_id not in cache} == dropped
    finally:
        cache.close()


def test_the_least_recently_used_row_leaves_first(connection: FakeConnection) -> None:
    cache, loads = listening_cache(connection, max_entries=3), Loads()
    try:
        for job_id in (1, 2, 3):
            loads.put(job_id, "x")
            cache.get(job_id, loads)
        cache.get(1, loads)  # 2 is now the least recently used
        loads.put(4, "x")
        cache.get(4, loads)
        assert len(cache) == 3 and 2 not in cache and all(job_id in cache for job_id in (1, 3, 4))
    finally:
        cache.close()


def test_expired_rows_are_read_again(connection: FakeConnection) -> None:
    offset = [0.0]
    cache = listening_cache(connection, ttl_s=0.3, clock=lambda: time.monotonic() + offset[0])
    loads = Loads()
    try:
        loads.put(1, "x")
        cache.get(1, loads)
        cache.get(1, loads)
        assert loads.count == 1
        offset[0] += 0.4
        cache.get(1, loads)
        assert loads.count == 2
    finally:
        cache.close()


def test_without_the_triggers_nothing_is_cached() -> None:
    connection = FakeConnection(triggers=2)
    cache, loads = RowCache(lambda: connection, check_s=0.05), Loads()  # type: ignore[arg-type,return-value]
    try:
        loads.put(1, "x")
        for _ in range(3):
            cache.get(1, loads)
        time.sleep(0.1)
        cache.get(1, loads)
        assert not cache.listening and loads.count == 4 and len(cache) == 0
    finally:
        cache.close()


def test_a_closed_cache_reads_through() -> None:
    connection = FakeConnection()
    cache, loads = listening_cache(connection), Loads()
    cache.close()
    loads.put(1, "x")
    cache.get(1, loads)
    cache.get(1, loads)
    assert not cache.listening and loads.count == 2


def test_waits_hear_of_each_notification_after_its_rows_have_left(connection: FakeConnection) -> None:
    heard: list[tuple[set[int] | None, bool]] = []
    caches: list[RowCache] = []
    loads = Loads()
    loads.put(5, "x")

    def on_change(ids: set[int] | None) -> None:
        # A woken wait must not read the old row from the cache: it has left before waits hear.
        heard.append((ids, bool(caches) and 5 in caches[0]))

    cache = RowCache(lambda: connection, check_s=0.05, on_change=on_change)  # type: ignore[arg-type,return-value]
    caches.append(cache)
    try:
        cache.get(5, loads)
        wait_until(lambda: cache.listening, "listening")
        assert heard[:1] == [(None, False)]  # listening (again): whatever changed meanwhile
        cache.get(5, loads)
        assert 5 in cache
        connection.notifications.put("5,6")
        wait_until(lambda: len(heard) >= 2, "the notification heard")
        assert heard[1] == ({5, 6}, False)
        connection.notifications.put("*")
        wait_until(lambda: len(heard) >= 3, "the truncation heard")
        assert heard[2] == (None, False)
    finally:
        cache.close()
