"""The stream's cursor (SPEC §13, tracker.store.cursor) on SQLite and PostgreSQL: every writer
stamps the rows it changes; a reader finds them after a cursor, in commit order, as they are now;
a deletion makes older cursors unresumable; and concurrent writers never make a reader skip one."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from tracker import listing, webhooks
from tracker.events import new_event
from tracker.model import Job
from tracker.store import JobStore, cursor, make_engine, migrate, open_job_store
from tracker.store.deliveries import Deliveries
from tracker.store.tables import async_status

ALL = listing.JobQuery()


@pytest.fixture
def store(engine: sa.Engine) -> JobStore:
    return open_job_store(engine)


def test_every_writer_stamps_its_rows_and_a_reader_finds_them_in_order_as_they_are_now(store, engine):
    start = store.stream_position()
    first = store.create_job("one")
    second = store.create_job("two", notify_url="https://hooks.test/x")
    created = store.changed_since(start, ALL, 100)
    assert [(job.id, job.message) for _, job in created.rows] == [(first.id, "one"), (second.id, "two")]
    assert start < created.rows[0][0] < created.rows[1][0] == store.stream_position()
    store.apply([new_event(first.id, "progress", "working")])
    store.apply([new_event(second.id, "succeeded", "done")])
    changes = store.changed_since(start, ALL, 100)
    assert not changes.reset
    assert [job.id for _, job in changes.rows] == [first.id, second.id]  # the first changed first
    assert [job for _, job in changes.rows] == [store.get_job(first.id), store.get_job(second.id)]
    assert [at for at, _ in changes.rows] == sorted(at for at, _ in changes.rows)
    assert changes.position == changes.rows[-1][0] == store.stream_position()
    # the webhooks' deliverer writes the row too (its notify field): a change
    deliveries = Deliveries(engine, lease_s=60)
    (claimed,), _ = deliveries.claim(10)
    after_claim = store.changed_since(changes.position, ALL, 100)
    assert [job.id for _, job in after_claim.rows] == [second.id]
    assert after_claim.rows[0][1].notify_attempts == 1
    deliveries.delivered(claimed)
    delivered = store.changed_since(after_claim.position, ALL, 100)
    assert [job.notify_state for _, job in delivered.rows] == [webhooks.DELIVERED]
    # nothing since: the same position, no reset
    assert store.changed_since(delivered.position, ALL, 100) == type(delivered)((), delivered.position)


def test_a_batch_that_changes_nothing_gives_no_cursor(store):
    job = store.create_job("x")
    event = new_event(job.id, "progress", "once")
    store.apply([event])
    before = store.stream_position()
    store.apply([event])  # the same event again: the row stays as it is
    assert store.stream_position() == before


def test_filters_and_paging_limits(store):
    start = store.stream_position()
    jobs = [store.create_job(f"job {n}") for n in range(5)]
    store.apply([new_event(jobs[1].id, "succeeded"), new_event(jobs[3].id, "failed")])
    ended = store.changed_since(start, listing.JobQuery(listing.JobFilter(statuses=("SUCCEEDED", "FAILED"))), 100)
    assert [job.id for _, job in ended.rows] == [jobs[1].id, jobs[3].id]
    one = store.changed_since(start, listing.JobQuery(id_above=jobs[2].id - 1, id_below=jobs[2].id + 1), 100)
    assert [job.id for _, job in one.rows] == [jobs[2].id]
    two = store.changed_since(start, ALL, 2)
    # a row is where its last change is: jobs[1] after the creation of jobs[4]
    assert [job.id for _, job in two.rows] == [jobs[0].id, jobs[2].id]
    rest = store.changed_since(two.position, ALL, 100)
    assert [job.id for _, job in rest.rows] == [jobs[4].id, jobs[1].id, jobs[3].id]


def test_a_read_goes_on_past_the_changes_its_filter_leaves_out(store):
    # A stream of a filter few changes match (one kind of many, the ended jobs) must not read every
    # change since its last match at each notification: its position moves on with the log's.
    succeeded = listing.JobQuery(listing.JobFilter(statuses=("SUCCEEDED",)))
    start = store.stream_position()
    watched = store.create_job("watched")
    others = [store.create_job(f"other {n}") for n in range(3)]
    store.apply([new_event(job.id, "progress", "on") for job in others])
    nothing = store.changed_since(start, succeeded, 100)
    assert nothing == type(nothing)((), store.stream_position())
    assert nothing.position > start
    store.apply([new_event(watched.id, "succeeded", "done")])
    store.apply([new_event(others[0].id, "progress", "later")])
    seen = store.changed_since(nothing.position, succeeded, 100)
    assert [job.id for _, job in seen.rows] == [watched.id]
    assert seen.position == store.stream_position() > seen.rows[0][0]  # past the later progress too
    # a full page stops at its last row: the rest is read next
    first = store.changed_since(start, ALL, 2)
    assert first.position == first.rows[-1][0] < store.stream_position()


def _plan_nodes(conn: sa.Connection, statement: sa.Select[Any], **values: Any) -> list[dict[str, Any]]:
    """Every node of PostgreSQL's plan of ``statement`` with ``values`` bound."""
    compiled = statement.params(**values).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    (plan,) = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + str(compiled).replace("%", "%%")).scalar_one()
    nodes, todo = [], [plan["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", ()))
    return nodes


def test_on_postgresql_a_read_is_planned_without_statistics_by_key_and_the_index_of_deletions(fresh_database):
    # Seen in the benchmark (#2c): in a database whose log and jobs had never been analysed, PostgreSQL
    # read the whole log for the deletions' check, and every matching job's row for each changed
    # job, at every notification: a read grew with the log, to 10 ms and more.
    engine = make_engine(fresh_database)
    try:
        migrate(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO async_status (status, message) SELECT CASE WHEN g %% 50 = 0 THEN 'SUCCEEDED' "
                "ELSE 'PENDING' END, 'x' FROM generate_series(1, 2000) g"
            )
            conn.exec_driver_sql("INSERT INTO async_status_change (job_id) VALUES (NULL)")
            conn.exec_driver_sql(
                "INSERT INTO async_status_change (job_id) SELECT 1 + g %% 2000 FROM generate_series(1, 100000) g"
            )
        store = open_job_store(engine)
        after = store.stream_position() - 200
        succeeded = listing.JobQuery(listing.JobFilter(statuses=("SUCCEEDED",)))
        with engine.connect() as conn:
            deletions = _plan_nodes(conn, cursor._resumable_statement(), after=after)  # noqa: SLF001
            changed = _plan_nodes(
                conn,
                cursor._changed_statement("postgresql", succeeded),  # noqa: SLF001
                after=after,
                most=100,
            )
        read = [(node.get("Relation Name"), node["Node Type"], node.get("Index Name")) for node in deletions + changed]
        assert ("async_status_change", "Seq Scan", None) not in read, read
        assert any(index == "ix_async_status_change_deletions" for _, _, index in read), read
        jobs = [(kind, index) for relation, kind, index in read if relation == "async_status"]
        assert jobs == [("Index Scan", "async_status_pkey")], read
        # the last 200 entries are of jobs 1802..2000 and 1, in that order: four of them ended
        assert [job.id for _, job in store.changed_since(after, succeeded, 100).rows] == [1850, 1900, 1950, 2000]
    finally:
        engine.dispose()


def test_a_cursor_from_before_a_deletion_a_pruning_or_from_elsewhere_is_reset(store, engine):
    job = store.create_job("x")
    kept = store.create_job("y")
    before = store.stream_position()
    with engine.begin() as conn:
        conn.execute(sa.delete(async_status).where(async_status.c.id == job.id))
    reset = store.changed_since(before, ALL, 100)
    assert reset.reset and reset.rows == ()
    assert reset.position > before
    # going on from the position the reset gave
    store.apply([new_event(kept.id, "progress", "on")])
    after = store.changed_since(reset.position, ALL, 100)
    assert not after.reset
    assert [j.id for _, j in after.rows] == [kept.id]
    # a cursor this database never gave
    assert store.changed_since(after.position + 1000, ALL, 100).reset
    # deleting nothing resets nothing
    with engine.begin() as conn:
        conn.execute(sa.delete(async_status).where(async_status.c.id == -1))
    assert not store.changed_since(after.position, ALL, 100).reset
    # pruning the log: a cursor in the pruned part is reset, one after it is not
    for n in range(6):
        store.apply([new_event(kept.id, "progress", f"step {n}", seq=n + 1)])
    newest = store.stream_position()
    with engine.begin() as conn:
        assert cursor.prune(conn, keep=2) > 0
        # at most _PRUNED_PER_STATEMENT a time: the log may hold earlier tests' entries before these
        while cursor.prune(conn, keep=2):
            pass
    assert store.changed_since(after.position, ALL, 100).reset
    assert not store.changed_since(newest - 1, ALL, 100).reset
    with engine.begin() as conn:
        assert cursor.prune(conn, keep=2) == 0  # nothing more to prune


def test_concurrent_writers_never_make_a_reader_skip_a_change(database_url):
    """Four writers fold batches of their own jobs at once, while a reader follows the cursor; the
    last state it saw of every job is the job's final row. A reader that moved past a cursor
    committed out of order would miss some job's last change."""
    engine = make_engine(database_url, pool_size=8, max_overflow=0)
    writers, jobs_each, rounds = 4, 6, 25
    try:
        store = open_job_store(engine)
        start = store.stream_position()
        jobs = [[store.create_job(f"w{w}") for _ in range(jobs_each)] for w in range(writers)]
        failures: list[Exception] = []

        def write(own: list[Job]) -> None:
            try:
                for n in range(rounds):
                    store.apply([new_event(job.id, "progress", f"step {n}", seq=n) for job in own])
            except Exception as exc:  # noqa: BLE001 - reported by the test's thread, below
                failures.append(exc)

        seen: dict[int, Job] = {}

        def follow(cursor: int) -> int:
            while True:
                changes = store.changed_since(cursor, ALL, 7)
                assert not changes.reset
                for position, job in changes.rows:
                    assert position > cursor
                    cursor = position
                    seen[job.id] = job
                if not changes.rows:
                    return cursor

        threads = [threading.Thread(target=write, args=(own,)) for own in jobs]
        for thread in threads:
            thread.start()
        cursor = start
        while any(thread.is_alive() for thread in threads):
            cursor = follow(cursor)
        for thread in threads:
            thread.join()
        assert not failures
        follow(cursor)
        finals = {job.id: store.get_job(job.id) for own in jobs for job in own}
        assert {job_id: seen.get(job_id) for job_id in finals} == finals
    finally:
        engine.dispose()


def test_a_cursor_taken_before_another_is_never_committed_after_it(store, engine):
    """The race the lock is for, made to happen: a writer takes a cursor and holds its transaction
    open while a fold of another job runs. Were that fold's later cursor committed first, a reader
    would move past it and never see the first writer's change."""
    slow_job, quick_job = store.create_job("slow"), store.create_job("quick")
    start = store.stream_position()
    stamped, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.update(async_status).where(async_status.c.id == slow_job.id).values(message="slow"))
            stamped.set()
            release.wait(10)

    slow = threading.Thread(target=slow_writer)
    slow.start()
    assert stamped.wait(10)
    quick = threading.Thread(target=lambda: store.apply([new_event(quick_job.id, "progress", "quick")]))
    quick.start()
    quick.join(0.5)  # the fold waits for the slow writer's commit (it would be done by now otherwise)
    early = store.changed_since(start, ALL, 100)
    assert early.rows == ()
    release.set()
    slow.join(10)
    quick.join(10)
    late = store.changed_since(early.position, ALL, 100)
    assert [job.message for _, job in late.rows] == ["slow", "quick"]


def test_a_read_is_two_statements_and_on_postgresql_no_transaction_of_its_own(store, engine):
    # A stream reads at every notification: each round trip it saves is latency (docs/performance.md,
    # "Where a change's milliseconds go"). The rows, then one statement for whether they can be resumed.
    start = store.stream_position()
    job = store.create_job("x")
    store.changed_since(start, ALL, 100)  # the statements built once
    seen: list[tuple[str, bool]] = []

    def executed(conn, _cursor, statement, _parameters, _context, _many):
        seen.append((statement, getattr(conn.connection.dbapi_connection, "autocommit", None) is True))

    sa.event.listen(engine, "before_cursor_execute", executed)
    try:
        changes = store.changed_since(start, ALL, 100)
    finally:
        sa.event.remove(engine, "before_cursor_execute", executed)
    assert [j.id for _, j in changes.rows] == [job.id]
    assert len([statement for statement, _ in seen if not statement.upper().startswith("BEGIN")]) == 2
    if engine.dialect.name == "postgresql":
        assert all(autocommit for _, autocommit in seen)  # no BEGIN and COMMIT round trips
