"""The exact row cache on a real PostgreSQL: every change reaches it, and it never serves a stale row.

Also GET's retry after a dropped connection. Migration 0002 (the triggers that notify) is
tested in test_migrations.py.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import falcon.testing
import psycopg
import pytest
import sqlalchemy as sa

from api.app import Deps, create_app, job_reads
from api.reads import JobReads
from api.resources import job_view
from api.rowcache import CHANNEL, RowCache, connector_for
from tests.conftest import TEST_SECRET
from tests.e2e.live_api import add_users, running_api
from tests.integration.test_api import FAST_PASSWORDS, PASSWORD
from tracker import auth
from tracker.config import Settings
from tracker.events import new_event
from tracker.model import Job
from tracker.store import JobNotFound, JobStore, StoreUnavailable, make_engine, migrate, open_job_store
from tracker.store.postgresql import PostgresJobStore
from tracker.users import LoginLimits, LoginThrottle, UserStore

CHECK_S = 0.2  # the listener proves itself five times a second here, so the tests wait less


def wait_until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.005)


class CountingStore(PostgresJobStore):
    """The real (PostgreSQL) store, counting the reads that reach the database."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self.reads = 0

    def get_job(self, job_id: int) -> Job:
        self.reads += 1
        return super().get_job(job_id)


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """The session's PostgreSQL database, emptied (TRUNCATE: which the triggers also announce)."""
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE async_status, async_status_event, tracker_user, tracker_login_failure RESTART IDENTITY CASCADE"
        )
    engine.dispose()
    return postgres_url


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(pg_url, pool_pre_ping=False)
    yield engine
    engine.dispose()


@pytest.fixture
def sql(pg_url: str) -> Iterator[Callable[..., Any]]:
    """Run one statement as an operator would, in its own committed transaction; its result rows."""
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")

    def run(statement: str, **params: object) -> list[sa.Row[Any]]:
        with engine.connect() as conn:
            result = conn.execute(sa.text(statement), params)
            return result.all() if result.returns_rows else []

    yield run
    engine.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> CountingStore:
    return CountingStore(engine)


@pytest.fixture
def cache(engine: sa.Engine) -> Iterator[RowCache]:
    """A cache that reads no rows by itself when it starts listening (warm-up has tests of its own)."""
    cache = RowCache(connector_for(engine), check_s=CHECK_S, warm_rows=0)
    yield cache
    cache.close()


def start_listening(cache: RowCache, store: JobStore) -> None:
    """Start the listener (first use does) and wait until it listens."""
    with pytest.raises(JobNotFound):
        cache.get(2**62, store.get_job)
    wait_until(lambda: cache.listening, "the listener listens")


@dataclasses.dataclass
class Api:
    client: falcon.testing.TestClient
    headers: dict[str, str]

    def get(self, job_id: int) -> falcon.testing.Result:
        return self.client.simulate_get(f"/api/5.0/async_status/{job_id}", headers=self.headers)


@pytest.fixture
def api(pg_url: str, store: CountingStore, cache: RowCache) -> Iterator[Api]:
    """The app as get_app builds it: GET's reads through the cache on an engine without pre-ping,
    everything else (here: users) on one with pre-ping."""
    engine = make_engine(pg_url)
    users = UserStore(engine, FAST_PASSWORDS)
    ops = users.add("ops", "operations", PASSWORD)
    settings = Settings(database_url=pg_url, secret=TEST_SECRET)
    tokens = auth.Tokens(TEST_SECRET, settings.token_ttl_s)
    deps = Deps(
        jobs=open_job_store(engine),
        users=users,
        throttle=LoginThrottle(engine, LoginLimits.of(settings)),
        tokens=tokens,
        settings=settings,
        reads=JobReads(store, cache),
    )
    start_listening(cache, store)
    yield Api(
        falcon.testing.TestClient(create_app(deps)), {"Authorization": f"Bearer {tokens.issue('ops', ops.account_id)}"}
    )
    engine.dispose()


def test_a_row_is_read_once_then_served_from_the_cache(api: Api, store: CountingStore) -> None:
    job = store.create_job("Deploying.")
    reads = store.reads
    first = api.get(job.id)
    assert first.status_code == 200 and first.json["response"]["message"] == "Deploying."
    for _ in range(5):
        assert api.get(job.id).json == first.json
    assert store.reads == reads + 1


def test_a_row_folded_by_the_store_is_served_fresh_once_notified(
    api: Api, store: CountingStore, cache: RowCache
) -> None:
    job = store.create_job("Deploying.")
    assert api.get(job.id).json["response"]["status"] == "PENDING"
    assert api.get(job.id).json["response"]["status"] == "PENDING"  # from the cache
    seen = cache.invalidations
    store.apply([new_event(job.id, "succeeded", "Deployed.")])
    wait_until(lambda: cache.invalidations > seen, "the update's notification arrives")
    answer = api.get(job.id).json["response"]
    assert (answer["status"], answer["message"]) == ("SUCCEEDED", "Deployed.")
    assert answer == job_view(store.get_job(job.id))
    reads = store.reads
    assert api.get(job.id).json["response"] == answer  # cached again
    assert store.reads == reads


def test_an_operators_update_and_delete_are_served_fresh_once_notified(
    api: Api, store: CountingStore, cache: RowCache, sql
) -> None:
    job, other = store.create_job("one"), store.create_job("two")
    assert api.get(job.id).status_code == api.get(other.id).status_code == 200
    seen = cache.invalidations
    sql("UPDATE async_status SET message = 'fixed by hand' WHERE id = :id", id=job.id)
    wait_until(lambda: cache.invalidations > seen, "the update's notification arrives")
    assert api.get(job.id).json["response"]["message"] == "fixed by hand"
    assert api.get(other.id).json["response"]["message"] == "two"

    seen = cache.invalidations
    sql("DELETE FROM async_status WHERE id = :id", id=job.id)
    wait_until(lambda: cache.invalidations > seen, "the delete's notification arrives")
    assert api.get(job.id).status_code == 404


def test_truncate_drops_every_row_even_when_ids_start_again(
    api: Api, store: CountingStore, cache: RowCache, sql
) -> None:
    job = store.create_job("before")
    assert api.get(job.id).json["response"]["message"] == "before"
    seen = cache.invalidations
    sql("TRUNCATE async_status RESTART IDENTITY CASCADE")
    wait_until(lambda: cache.invalidations > seen, "the truncate's notification arrives")
    again = store.create_job("after")
    assert again.id == job.id
    assert api.get(job.id).json["response"]["message"] == "after"


def test_a_missing_row_is_not_remembered(api: Api, store: CountingStore) -> None:
    next_id = store.create_job().id + 1
    assert api.get(next_id).status_code == 404
    assert api.get(next_id).status_code == 404
    created = store.create_job("new")  # an insert notifies nothing
    assert created.id == next_id
    assert api.get(next_id).json["response"]["message"] == "new"


def test_a_read_that_overlaps_an_invalidation_is_not_kept(store: CountingStore, cache: RowCache, sql) -> None:
    job = store.create_job("old")
    start_listening(cache, store)

    def read_then_change(job_id: int) -> Job:
        # The read sees the row as it was; before the cache can keep it, the row changes and the
        # notification is applied: exactly the race the invalidation counter is there for.
        row = store.get_job(job_id)
        seen = cache.invalidations
        sql("UPDATE async_status SET message = 'new' WHERE id = :id", id=job_id)
        wait_until(lambda: cache.invalidations > seen, "the notification arrives during the read")
        return row

    assert cache.get(job.id, read_then_change).message == "old"  # as read: the read came first
    assert job.id not in cache
    reads = store.reads
    assert cache.get(job.id, store.get_job).message == "new"
    assert store.reads == reads + 1
    assert cache.get(job.id, store.get_job).message == "new"
    assert store.reads == reads + 1  # this one was kept


def test_a_read_racing_notifications_about_other_rows_is_not_kept_either(
    store: CountingStore, cache: RowCache, sql
) -> None:
    job, other = store.create_job("mine"), store.create_job("other")
    start_listening(cache, store)

    def read_while_another_changes(job_id: int) -> Job:
        row = store.get_job(job_id)
        seen = cache.invalidations
        sql("UPDATE async_status SET message = 'changed' WHERE id = :id", id=other.id)
        wait_until(lambda: cache.invalidations > seen, "the notification arrives during the read")
        return row

    cache.get(job.id, read_while_another_changes)
    assert job.id not in cache  # one counter for all: conservative, never wrong


def test_a_killed_listener_connection_bypasses_and_empties_the_cache_until_it_listens_again(
    engine: sa.Engine, store: CountingStore, sql
) -> None:
    connect = connector_for(engine)
    refused = threading.Event()

    def connect_unless_refused() -> psycopg.Connection[Any]:
        if refused.is_set():
            raise psycopg.OperationalError("refused by the test")
        return connect()

    cache = RowCache(connect_unless_refused, check_s=CHECK_S, warm_rows=0)
    try:
        job = store.create_job("before")
        start_listening(cache, store)
        cache.get(job.id, store.get_job)
        assert job.id in cache
        killed = cache.backend_pid
        refused.set()
        assert sql("SELECT pg_terminate_backend(:pid)", pid=killed)[0][0]
        wait_until(lambda: not cache.listening, "the listener notices its connection is gone")
        assert len(cache) == 0

        # No listener: a change nobody is told about is still seen, because nothing is cached.
        sql("UPDATE async_status SET message = 'while deaf' WHERE id = :id", id=job.id)
        reads = store.reads
        for _ in range(3):
            assert cache.get(job.id, store.get_job).message == "while deaf"
        assert store.reads == reads + 3
        assert len(cache) == 0

        refused.clear()
        wait_until(lambda: cache.listening, "the listener reconnects (capped back-off)")
        assert cache.backend_pid not in (None, killed)
        assert cache.get(job.id, store.get_job).message == "while deaf"
        seen = cache.invalidations
        sql("UPDATE async_status SET message = 'after' WHERE id = :id", id=job.id)
        wait_until(lambda: cache.invalidations > seen, "the new connection hears of changes")
        assert cache.get(job.id, store.get_job).message == "after"
    finally:
        cache.close()


def test_the_cache_is_not_used_while_the_listener_has_not_proved_itself_recently(
    engine: sa.Engine, store: CountingStore
) -> None:
    offset = [0.0]
    cache = RowCache(connector_for(engine), check_s=CHECK_S, warm_rows=0, clock=lambda: time.monotonic() + offset[0])
    try:
        job = store.create_job()
        start_listening(cache, store)
        cache.get(job.id, store.get_job)
        reads = store.reads
        cache.get(job.id, store.get_job)
        assert store.reads == reads
        offset[0] += 60  # as if the listener had been stuck for a minute
        cache.get(job.id, store.get_job)
        assert store.reads == reads + 1

        def served_from_the_cache() -> bool:
            before = store.reads
            cache.get(job.id, store.get_job)
            return store.reads == before

        wait_until(served_from_the_cache, "the listener proves itself again and the cache serves once more")
    finally:
        cache.close()


def test_disabled_triggers_turn_the_cache_off(store: CountingStore, cache: RowCache, sql) -> None:
    job = store.create_job()
    start_listening(cache, store)
    try:
        sql("ALTER TABLE async_status DISABLE TRIGGER tracker_async_status_updated")
        wait_until(lambda: not cache.listening, "the listener sees the trigger is off")
        reads = store.reads
        cache.get(job.id, store.get_job)
        cache.get(job.id, store.get_job)
        assert store.reads == reads + 2
    finally:
        sql("ALTER TABLE async_status ENABLE TRIGGER tracker_async_status_updated")
    wait_until(lambda: cache.listening, "the listener listens again once the trigger is back", timeout=15)


def test_the_caches_own_reads_make_the_rows_the_store_makes(engine: sa.Engine, store: CountingStore) -> None:
    """The warm-up and the refreshes read with the cache's own SQL: every field of SPEC §11 too."""
    # JSONB keeps keys shorter first: "zz" before "aaa", where sorted pairs have them the other way
    said = store.create_job("created", kind="export.csv", labels=(("zz", "1"), ("aaa", "2")))
    start = said.start_time
    store.apply(
        [
            new_event(said.id, "cancel_requested", None, occurred_at=start),
            new_event(said.id, "progress", None, progress=62.5, occurred_at=start),
            new_event(said.id, "failed", "x", error_code="lost", error_details={"é": [1.5]}, occurred_at=start),
        ]
    )
    done, plain = store.create_job(), store.create_job()
    store.apply([new_event(done.id, "succeeded", None, result={"rows": 3, "ok": None})])
    cache = RowCache(connector_for(engine), check_s=CHECK_S, warm_rows=10)

    def not_read(job_id: int) -> Job:
        raise AssertionError(f"job {job_id} was not in the cache")

    try:
        start_listening(cache, store)
        for job in (said, done, plain):
            wait_until(lambda job=job: job.id in cache, "the warm-up reads the row")
            assert cache.get(job.id, not_read) == store.get_job(job.id)
        assert cache.get(said.id, not_read).labels == (("aaa", "2"), ("zz", "1"))
    finally:
        cache.close()


def test_rows_nobody_asks_for_expire_after_their_ttl(engine: sa.Engine, store: CountingStore) -> None:
    offset = [0.0]
    cache = RowCache(
        connector_for(engine), check_s=CHECK_S, ttl_s=0.5, warm_rows=10, clock=lambda: time.monotonic() + offset[0]
    )
    try:
        job = store.create_job()
        start_listening(cache, store)
        wait_until(lambda: job.id in cache, "the warm-up reads the row")
        reads = store.reads
        offset[0] += 0.6  # past its TTL, still within the listener's proof window
        assert cache.get(job.id, store.get_job) == store.get_job(job.id)
        assert store.reads == reads + 2  # the cache's read, and the comparison's
    finally:
        cache.close()


def test_rows_in_use_are_read_again_in_bulk_before_they_expire(engine: sa.Engine, store: CountingStore) -> None:
    cache = RowCache(connector_for(engine), check_s=CHECK_S, ttl_s=0.6, idle_s=0.3, warm_rows=0)
    try:
        polled, left = store.create_job("polled"), store.create_job("left alone")
        start_listening(cache, store)
        cache.get(polled.id, store.get_job)
        cache.get(left.id, store.get_job)
        reads = store.reads
        deadline = time.monotonic() + 2.0  # more than three times the TTL
        while time.monotonic() < deadline:
            assert cache.get(polled.id, store.get_job).message == "polled"
            time.sleep(0.02)
        assert store.reads == reads  # the listener read it again each time, not the requests
        assert left.id not in cache
        assert cache.missed_notifications == 0
    finally:
        cache.close()


def test_a_change_no_notification_told_of_is_corrected_within_the_ttl(
    engine: sa.Engine, store: CountingStore, pg_url: str
) -> None:
    cache = RowCache(connector_for(engine), check_s=CHECK_S, ttl_s=0.6, warm_rows=0)
    try:
        job = store.create_job("before")
        start_listening(cache, store)
        cache.get(job.id, store.get_job)
        cache.get(job.id, store.get_job)
        with psycopg.connect(
            sa.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True
        ) as replica:
            # What a logical-replication apply worker does: writes with the triggers asleep.
            replica.execute("SET session_replication_role = replica")
            replica.execute("UPDATE async_status SET message = 'behind its back' WHERE id = %s", (job.id,))
        changed_at = time.monotonic()
        wait_until(
            lambda: cache.get(job.id, store.get_job).message == "behind its back", "the safety net catches the change"
        )
        assert time.monotonic() - changed_at < 0.6 + 3 * CHECK_S
        assert cache.missed_notifications in (0, 1)  # 1 if it was read again, 0 if it expired first
    finally:
        cache.close()


def test_the_newest_rows_are_read_in_one_query_once_listening(engine: sa.Engine, store: CountingStore) -> None:
    jobs = [store.create_job(f"job {n}") for n in range(5)]
    cache = RowCache(connector_for(engine), check_s=CHECK_S, warm_rows=3)
    try:
        start_listening(cache, store)
        wait_until(lambda: len(cache) == 3, "the newest three rows are read")
        reads = store.reads
        assert [cache.get(job.id, store.get_job) for job in jobs[2:]] == [store.get_job(j.id) for j in jobs[2:]]
        assert store.reads == reads + 3  # only the comparison's own reads
        cache.get(jobs[0].id, store.get_job)
        assert store.reads == reads + 4
    finally:
        cache.close()


class _ChangeAfterBulkRead:
    """The listener's connection, with a row changed (and committed) just after each bulk read."""

    def __init__(self, real: psycopg.Connection[Any], change: Callable[[], None]) -> None:
        self._real = real
        self._change = change

    def __enter__(self) -> _ChangeAfterBulkRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.__exit__(*exc)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def notifies(self, timeout: float) -> Any:
        if timeout:
            # Notifications applied only in the listener's waits would come this late: a stale
            # row kept by the bulk read would be there to see.
            time.sleep(0.5)
        return self._real.notifies(timeout=timeout)

    def execute(self, query: str, params: Any = None) -> Any:
        result = self._real.execute(query, params)
        if "ORDER BY id DESC" in query or "id = ANY" in query:
            rows = result.fetchall()
            self._change()
            return _Rows(rows)
        return result


@dataclasses.dataclass
class _Rows:
    rows: list[Any]

    def fetchall(self) -> list[Any]:
        return self.rows


def test_a_bulk_read_overtaken_by_a_change_does_not_keep_that_row(engine: sa.Engine, store: CountingStore, sql) -> None:
    changed, untouched = store.create_job("old"), store.create_job("untouched")
    connect = connector_for(engine)
    cache = RowCache(
        lambda: _ChangeAfterBulkRead(  # type: ignore[arg-type,return-value]
            connect(), lambda: sql("UPDATE async_status SET message = 'new' WHERE id = :id", id=changed.id)
        ),
        check_s=CHECK_S,
        warm_rows=10,
    )
    try:
        start_listening(cache, store)
        wait_until(lambda: untouched.id in cache, "the warm-up is kept")
        assert changed.id not in cache
        assert cache.get(changed.id, store.get_job).message == "new"
    finally:
        cache.close()


def test_a_forked_process_trusts_nothing_it_inherited(store: CountingStore, cache: RowCache) -> None:
    job = store.create_job("parent")
    start_listening(cache, store)
    cache.get(job.id, store.get_job)
    assert job.id in cache
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            fake = dataclasses.replace(job, message="read in the child")
            ok = not cache.listening and cache.get(job.id, lambda _id: fake).message == "read in the child"
            status = 0 if ok else 1
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.listening and job.id in cache  # the parent's cache is untouched


def test_get_is_retried_once_after_its_connection_was_dropped(api: Api, store: CountingStore, sql) -> None:
    job = store.create_job("still here")

    def kill_every_other_connection() -> None:
        """What a restart of PostgreSQL does to the pools (and to the cache's listener)."""
        # OFFSET 0 keeps the planner from calling pg_terminate_backend before the other conditions.
        killed = sql(
            "SELECT pid, pg_terminate_backend(pid) FROM ("
            "  SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            "  AND pid <> pg_backend_pid() AND backend_type = 'client backend' OFFSET 0) AS others"
        )
        assert killed
        pids = [row[0] for row in killed]
        wait_until(
            lambda: not sql("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(:pids)", pids=pids), "the backends are gone"
        )

    # Without the retry, the first read after the kill fails: that is what the test exercises.
    store.get_job(job.id)
    kill_every_other_connection()
    with pytest.raises(StoreUnavailable) as failed:
        store.get_job(job.id)
    assert failed.value.__cause__.connection_invalidated  # type: ignore[union-attr]

    assert api.get(job.id + 1).status_code == 404  # the caller's user is looked up now, not below
    store.get_job(job.id)  # a connection in the pool again
    kill_every_other_connection()
    answer = api.get(job.id)  # not in the cache: read from the database, over the dead connection first
    assert answer.status_code == 200
    assert answer.json["response"]["message"] == "still here"


def test_get_is_503_when_the_database_is_really_away() -> None:
    dead = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none", pool_pre_ping=False)
    try:
        reads = JobReads(open_job_store(dead), RowCache(connector_for(dead), check_s=CHECK_S))
        with pytest.raises(StoreUnavailable):
            reads.get_job(1)
        reads.close()
    finally:
        dead.dispose()


def test_job_reads_use_the_cache_on_postgresql_only(pg_url: str, tmp_path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'tracker.db'}"
    sqlite = make_engine(sqlite_url)
    migrate(sqlite)
    sqlite.dispose()
    assert job_reads(sqlite_url)._cache is None  # noqa: SLF001
    assert job_reads(pg_url, cached_rows=0)._cache is None  # noqa: SLF001
    reads = job_reads(pg_url)
    assert isinstance(reads._cache, RowCache)  # noqa: SLF001
    reads.close()


def test_the_api_under_gunicorn_serves_fresh_rows_from_its_workers_caches(pg_url: str, tmp_path, sql) -> None:
    add_users(pg_url, ops="operations")
    store = open_job_store(make_engine(pg_url))
    job = store.create_job("before")
    with running_api(pg_url, tmp_path) as live:
        headers = {"Authorization": f"Bearer {live.login('ops')}"}

        def message() -> str:
            answer = live.request("GET", f"/api/5.0/async_status/{job.id}", headers=headers)
            assert answer.status == 200, answer
            return answer.json["response"]["message"]  # type: ignore[index]

        for _ in range(20):  # enough for both workers to have read and kept the row
            assert message() == "before"
        sql("UPDATE async_status SET message = 'after' WHERE id = :id", id=job.id)
        changed_at = time.monotonic()
        wait_until(lambda: all(message() == "after" for _ in range(10)), "every worker serves the new row")
        # Well within the 5 s TTL: the notification did it, not the expiry.
        assert time.monotonic() - changed_at < 2.5
    store.engine.dispose()


@pytest.mark.parametrize("statement", ["UPDATE async_status SET message = 'all'", "DELETE FROM async_status"])
def test_many_changed_ids_are_notified_in_chunks_under_the_payload_limit(pg_url: str, sql, statement: str) -> None:
    # The longest ids there are (19 digits), 2,500 of them: 50 kB of ids in one statement.
    ids = {2**63 - 1 - n for n in range(2500)}
    sql(
        "INSERT INTO async_status (id, status, message) SELECT 9223372036854775807 - g, 'PENDING', 'x' "
        "FROM generate_series(0, 2499) AS g"
    )
    with psycopg.connect(
        sa.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True
    ) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        sql(statement)
        notified: list[int] = []
        payloads = []
        deadline = time.monotonic() + 10
        while len(notified) < len(ids) and time.monotonic() < deadline:
            for notify in listener.notifies(timeout=0.5):
                payloads.append(notify.payload)
                notified.extend(int(part) for part in notify.payload.split(","))
    assert sorted(notified) == sorted(ids)  # each id once, none missing
    assert len(payloads) == 9  # 300 ids a payload
    assert max(len(payload.encode()) for payload in payloads) <= 6000  # PostgreSQL refuses 8000
