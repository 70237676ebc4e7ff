"""Migration 0014's partial index of PENDING jobs with a cancel request: the repeat of cancel
messages and the grace read it (EXPLAIN, both databases), and other jobs' updates stay HOT."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from tracker import events, timefmt
from tracker.store import open_job_store
from tracker.store.cancels import CancelRequests, notices_query
from tracker.store.leases import overdue_cancels_query
from tracker.store.tables import async_status

INDEX = "ix_async_status_pending_cancel_requested"
_AT = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _plan(conn: sa.Connection, statement: sa.Select[Any]) -> str:
    compiled = statement.compile(dialect=conn.dialect)
    if conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).all()
        return "\n".join(row[0] for row in rows)
    positional = tuple(compiled.params[name] for name in compiled.positiontup or ())
    rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", positional).all()
    return "\n".join(str(row[-1]) for row in rows)


def test_the_repeat_and_the_grace_walk_the_index_of_requests(engine: sa.Engine) -> None:
    # Many jobs, running and finished, a few with a cancellation asked: the planner's statistics
    # then favour the small index over reading every PENDING row.
    rows = [
        {
            "status": "PENDING" if n % 3 else "SUCCEEDED",
            "message": "x",
            "start_time": _AT + dt.timedelta(seconds=n),
            "initial_message": "x",
        }
        for n in range(20_000)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(async_status), rows)
    store = open_job_store(engine)
    asked = [store.create_job("to cancel").id for _ in range(3)]
    requests = CancelRequests(store)
    for job_id in asked:
        requests.request(job_id, "stop", timefmt.now())
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")

    with engine.connect() as conn:
        repeat = _plan(conn, notices_query(1000))
        grace = _plan(conn, overdue_cancels_query(timefmt.now(), 1000))
    assert INDEX in repeat, repeat
    assert INDEX in grace, grace
    told: list[int] = []
    assert requests.pending_notices(lambda notices: told.extend(n.job_id for n in notices), 1000) == 3
    assert told == asked


def test_updates_of_jobs_without_a_request_leave_it_alone(engine: sa.Engine) -> None:
    store = open_job_store(engine)
    running, asked = store.create_job("runs").id, store.create_job("cancelled").id
    CancelRequests(store).request(asked, "stop", timefmt.now())
    store.apply([events.new_event(running, "progress", "half", progress=50.0)])
    with engine.connect() as conn:
        if engine.dialect.name != "postgresql":
            return
        # As the fold writes a running job's row: still a heap-only update, no index touched. (The
        # counts include the connection's earlier transactions until they are flushed: a difference.)
        counts = sa.text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'async_status'")
        with conn.begin():
            before = conn.execute(counts).one()
            conn.execute(sa.update(async_status).where(async_status.c.id == running).values(message="more"))
            after = conn.execute(counts).one()
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
