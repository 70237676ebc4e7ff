"""The row cache and its parts without a database: the map of rows (bounds, expiry, what is due), the
listener's trust, the listener against a fake connection, and the cache that composes them."""

from __future__ import annotations

import datetime as dt
import itertools
import queue
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from api.rowcache import CHANNEL, ChangeListener, RowCache, RowMap, Trust
from tracker.errors import JobNotFound
from tracker.model import Job

"""The row cache and its parts without a database: the map of rows (bounds, expiry, what is due), the
listener's trust, the listener against a fake connection, and the cache that composes them."""


START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


class FakeConnection:
    """Enough of a psycopg connection for the listener: LISTEN, the trigger check, notifications,
    and the bulk reads of ``rows`` (none unless a test puts some), calling ``during_read`` after each."""

    def __init__(self, triggers: int = 3) -> None:
        # a payload on CHANNEL, or (channel, payload)
        self.notifications: queue.Queue[str | tuple[str, str]] = queue.Queue()
        self.triggers = triggers
        self.read_only = False  # a standby, or a primary fenced read-only
        self.info = SimpleNamespace(backend_pid=4242)
        self.rows: dict[int, Job] = {}
        self.during_read: Callable[[], None] = lambda: None
        self.queries: list[str] = []

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def execute(self, query: str, params: Any = None) -> Any:
        self.queries.append(query)
        if "pg_trigger" in query:
            return SimpleNamespace(fetchone=lambda: (self.triggers, self.read_only))
        if "ORDER BY id DESC" in query:
            found = sorted(self.rows.values(), key=lambda job: -job.id)[: params[0]]
        elif "id = ANY" in query:
            found = [self.rows[job_id] for job_id in params[0] if job_id in self.rows]
        else:
            found = []  # LISTEN
        self.during_read()
        rows = [_as_read(job) for job in found]
        return SimpleNamespace(fetchall=lambda: rows)

    def notifies(self, timeout: float) -> Iterator[SimpleNamespace]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.notifications.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            channel, payload = item if isinstance(item, tuple) else (CHANNEL, item)
            yield SimpleNamespace(channel=channel, payload=payload)


def _as_read(job: Job) -> tuple[object, ...]:
    """``job`` as the listener's SQL reads it: the public columns, labels as the JSON object psycopg
    gives for JSONB (keys in its own order, shorter first), the JSON texts as text."""
    labels = dict(sorted(job.labels, key=lambda pair: (len(pair[0]), pair[0]))) or None
    return (
        job.id,
        job.status,
        job.start_time,
        job.end_time,
        job.message,
        job.kind,
        labels,
        job.progress,
        job.result_json,
        job.error_code,
        job.error_details_json,
        job.cancel_requested_at,
        job.notify_url,
        job.notify_state,
        job.notify_attempts,
    )


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


def row(job_id: int, message: str = "x") -> Job:
    return Job(job_id, "PENDING", START, None, message)


def test_the_map_serves_a_row_until_its_ttl_has_passed_then_drops_it() -> None:
    rows = RowMap(max_entries=10, ttl_s=5)
    rows.remember(row(1), read_at=100, used_at=100)
    assert rows.get(1, 104.9) == row(1)
    assert rows.get(1, 105) is None
    assert 1 not in rows and len(rows) == 0
    assert rows.get(2, 100) is None


def test_the_map_drops_the_least_recently_used_row_first() -> None:
    rows = RowMap(max_entries=3, ttl_s=30)
    for job_id in (1, 2, 3):
        rows.remember(row(job_id), read_at=0, used_at=0)
    rows.get(1, 1)
    rows.remember(row(4), read_at=1, used_at=1)
    assert [job_id in rows for job_id in (1, 2, 3, 4)] == [True, False, True, True]


def test_rows_nobody_asked_for_are_added_only_where_there_is_room_and_no_row() -> None:
    rows = RowMap(max_entries=2, ttl_s=30)
    rows.remember(row(1, "asked for"), read_at=0, used_at=0)
    rows.add(row(1, "read in bulk"), read_at=1)
    rows.add(row(2), read_at=1)
    rows.add(row(3), read_at=1)  # full: pushes nothing out
    assert rows.get(1, 2) == row(1, "asked for")
    assert 2 in rows and 3 not in rows


def test_a_refresh_replaces_only_a_row_still_there_and_says_whether_it_differed() -> None:
    rows = RowMap(max_entries=10, ttl_s=5)
    assert not rows.refresh(row(1), read_at=0)
    assert 1 not in rows  # it had left on purpose: not brought back
    rows.remember(row(1, "old"), read_at=0, used_at=0)
    assert not rows.refresh(row(1, "old"), read_at=4)
    assert rows.refresh(row(1, "new"), read_at=4)
    assert rows.get(1, 8.9) == row(1, "new")  # read again at 4: served until 9


def test_rows_due_are_those_in_use_about_to_expire_and_the_idle_ones_leave_once_expired() -> None:
    rows = RowMap(max_entries=10, ttl_s=10)
    rows.remember(row(1), read_at=0, used_at=0)  # expires at 10, asked for at 0
    rows.add(row(2), read_at=0)  # expires at 10, never asked for
    rows.remember(row(3), read_at=5, used_at=5)  # expires at 15
    assert rows.take_due(now=8, horizon=11, idle_s=60, count=100) == ([1], True)
    assert 2 in rows  # idle, not yet expired: looked at again later
    assert rows.take_due(now=12, horizon=16, idle_s=60, count=100) == ([3], True)
    assert 2 not in rows  # idle and expired: gone


def test_rows_due_skip_expiries_of_rows_read_again_and_stop_after_count() -> None:
    rows = RowMap(max_entries=10, ttl_s=10)
    for job_id in (1, 2, 3):
        rows.remember(row(job_id), read_at=0, used_at=0)
    rows.refresh(row(1), read_at=5)  # its first expiry (10) is stale now
    assert rows.take_due(now=9, horizon=11, idle_s=60, count=2) == ([2], False)
    assert rows.take_due(now=9, horizon=11, idle_s=60, count=2) == ([3], True)
    assert rows.take_due(now=14, horizon=16, idle_s=60, count=5) == ([1], True)
    assert rows.take_due(now=9, horizon=11, idle_s=0, count=5) == ([], True)  # nothing queued any more


def test_trust_holds_for_a_window_after_each_proof_and_never_while_dark() -> None:
    trust = Trust(window_s=2)
    assert not trust.listening and trust.until == float("-inf")
    trust.live(proved_at=10)
    assert trust.listening and trust.until == 12
    trust.proved(11)
    assert trust.until == 13
    trust.dark()
    trust.proved(14)  # a late proof of a connection already given up
    assert not trust.listening and trust.until == float("-inf")


class Heard:
    """ListenerHooks that write down what the listener says, and hand it the rows due."""

    def __init__(self) -> None:
        self.said: list[tuple[object, ...]] = []
        self.due: list[int] = []
        self.jobs: list[Job] = []  # the rows of the last read

    def went_live(self, proved_at: float) -> None:
        self.said.append(("live",))

    def proved(self, at: float) -> None:
        self.said.append(("proved",))

    def went_dark(self) -> None:
        self.said.append(("dark",))

    def notified(self, job_ids: set[int] | None) -> None:
        self.said.append(("notified", job_ids))

    def rows_due(self) -> list[int]:
        due, self.due = self.due, []
        return due

    def rows_read(self, jobs: list[Job], read_at: float, changed: set[int], refresh: bool) -> None:
        self.said.append(("read", [job.id for job in jobs], changed, refresh))
        self.jobs = jobs

    def count(self, what: str) -> int:
        return sum(1 for said in self.said if said[0] == what)


def started_listener(connect: Callable[[], FakeConnection], heard: Heard, warm_rows: int = 0) -> ChangeListener:
    """A listener over ``connect``'s fake connections telling ``heard``, turning every 20 ms, started."""
    listener = ChangeListener(connect, heard, check_s=0.02, warm_rows=warm_rows, clock=time.monotonic)  # type: ignore[arg-type]
    listener.start()
    return listener


def test_the_listener_goes_live_proves_itself_each_turn_and_passes_notifications_on(
    connection: FakeConnection,
) -> None:
    heard = Heard()
    listener = started_listener(lambda: connection, heard, warm_rows=0)
    try:
        wait_until(lambda: heard.count("proved") >= 3, "three more proofs")
        assert heard.said[0] == ("live",) and listener.backend_pid == 4242
        assert connection.queries[0].startswith("LISTEN ")
        connection.notifications.put("1,2")
        connection.notifications.put("*")
        wait_until(lambda: heard.count("notified") == 2, "the notifications")
        assert [said for said in heard.said if said[0] == "notified"] == [("notified", {1, 2}), ("notified", None)]
    finally:
        listener.close(5)
    assert heard.said[-1] == ("dark",) and listener.backend_pid is None
    assert heard.count("live") == 1


def test_the_listener_reads_the_newest_rows_once_live_and_the_rows_due_at_each_turn(
    connection: FakeConnection,
) -> None:
    for job_id in (1, 2, 3):
        connection.rows[job_id] = row(job_id)
    heard = Heard()
    listener = started_listener(lambda: connection, heard, warm_rows=2)
    try:
        wait_until(lambda: heard.count("read") == 1, "the warm-up")
        assert [said for said in heard.said if said[0] == "read"] == [("read", [3, 2], set(), False)]
        # A change committed during a bulk read is named to the cache with the rows read.
        connection.during_read = lambda: connection.notifications.put("1")
        heard.due = [1, 9]
        wait_until(lambda: heard.count("read") == 2, "the rows due")
        assert heard.said[-1] == ("read", [1], {1}, True)
        assert heard.said[-2] == ("notified", {1})  # applied before the rows were handed over
        connection.during_read = lambda: connection.notifications.put("*")
        heard.due = [2]
        wait_until(lambda: ("notified", None) in heard.said, "a truncation during the read")
        time.sleep(0.1)
        assert heard.count("read") == 2  # any row may have changed: the read is not handed over
    finally:
        listener.close(5)


def test_the_listener_makes_the_rows_the_store_makes_every_field_of_them(connection: FakeConnection) -> None:
    said = Job(
        1,
        "FAILED",
        START,
        START,
        "gave up",
        "export",
        (("aaa", "2"), ("zz", "1")),  # JSONB gives "zz" first; the row keeps them sorted
        62.5,
        None,
        "lost",
        '{"a":[1]}',
        START,
        "https://hooks.example.com/jobs",
        "failed",
        3,
    )
    connection.rows = {1: said, 2: row(2)}
    heard = Heard()
    listener = started_listener(lambda: connection, heard, warm_rows=2)
    try:
        wait_until(lambda: heard.count("read") == 1, "the warm-up")
        assert heard.jobs == [row(2), said]  # newest first
    finally:
        listener.close(5)


def test_without_the_triggers_the_listener_backs_off_and_starts_afresh_once_live() -> None:
    connection = FakeConnection(triggers=2)
    connected: list[float] = []

    def connect() -> FakeConnection:
        connected.append(time.monotonic())
        return connection

    heard = Heard()
    listener = started_listener(connect, heard)
    try:
        wait_until(lambda: len(connected) >= 4, "four tries", timeout=10)
        assert heard.count("live") == 0 and heard.count("dark") >= 3
        gaps = [later - earlier for earlier, later in itertools.pairwise(connected)]
        assert gaps[2] > 1.5 * gaps[0]  # 0.1 s doubling, with jitter: 0.08-0.1, 0.16-0.2, 0.32-0.4
        connection.triggers = 3
        wait_until(lambda: heard.count("live") == 1, "live once the triggers are back", timeout=10)
        tries = len(connected)
        lost_at = time.monotonic()
        connection.triggers = 2  # lost again: the back-off starts afresh, not where it was
        wait_until(lambda: len(connected) > tries, "a new try")
        assert connected[-1] - lost_at < 0.3
    finally:
        listener.close(5)


def test_a_listener_on_a_server_that_takes_no_writes_goes_dark_and_trusts_nothing_once_live_elsewhere() -> None:
    # A failover: the server the listener was on is fenced read-only (or its connection now lands
    # on a standby); changes are made on another server, of which this one will never notify.
    connection = FakeConnection()
    heard = Heard()
    listener = started_listener(lambda: connection, heard)
    try:
        wait_until(lambda: heard.count("live") == 1, "live")
        connection.read_only = True
        wait_until(lambda: heard.count("dark") >= 1, "dark once its server takes no writes")
        time.sleep(0.3)
        assert heard.count("live") == 1  # never live again while it takes none
        connection.read_only = False  # the primary, found again
        wait_until(lambda: heard.count("live") == 2, "live again")
    finally:
        listener.close(5)


def test_the_cache_empties_and_wakes_every_wait_when_its_listener_is_live_again_after_a_failover(
    connection: FakeConnection,
) -> None:
    woken: list[set[int] | None] = []
    cache, loads = listening_cache(connection, warm_rows=0, on_change=woken.append), Loads()
    try:
        loads.put(1, "running")
        cache.get(1, loads)
        assert 1 in cache
        connection.read_only = True  # the old primary, fenced: what it says no longer counts
        wait_until(lambda: not cache.listening, "not listening")
        assert len(cache) == 0
        loads.put(1, "changed on the new primary, unheard")
        assert cache.get(1, loads).message == "changed on the new primary, unheard"  # read, not served from memory
        woken.clear()
        connection.read_only = False
        wait_until(lambda: cache.listening, "listening again")
        assert None in woken  # every held wait reads again: it may have missed a change
    finally:
        cache.close(5)
