"""The PostgreSQL store's sessions: what a batch sends (each statement within psycopg's cache of
converted queries), the merge function made once per session, and made again after a reconnect."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg._queries
import pytest
import sqlalchemy as sa

from tracker import merge
from tracker.errors import StoreBroken, StoreUnavailable
from tracker.events import new_event
from tracker.store import make_engine
from tracker.store.postgresql import PostgresJobStore

MAKES_THE_MERGE = "CREATE OR REPLACE FUNCTION pg_temp.tracker_merge("


class Sent:
    """Every statement psycopg's cursors are given while it is recorded: those SQLAlchemy sends and
    those the store sends on the DBAPI connection itself (a batch's pipeline)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.statements: list[str] = []
        execute = psycopg.Cursor.execute

        def recorded(cursor: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
            # psycopg's own queries (type lookups) come composed: their text is not the store's.
            text = query.decode() if isinstance(query, bytes) else query if isinstance(query, str) else repr(query)
            self.statements.append(text)
            return execute(cursor, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", recorded)

    def take(self) -> list[str]:
        """The statements sent since the last take."""
        taken, self.statements = self.statements, []
        return taken


@pytest.fixture
def one_connection(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    """An engine with a pool of one connection, so that every fold uses the same one while it lives."""
    engine = make_engine(postgres_url, pool_size=1, max_overflow=0, **getattr(request, "param", {}))
    yield engine
    engine.dispose()


def _backend_of(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def test_a_batch_sends_only_statements_psycopg_converts_once(
    one_connection: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over psycopg's limit, a statement's text is split with a regular expression on every batch:
    # the merge must reach the database otherwise than as a text sent with each batch.
    store, sent = PostgresJobStore(one_connection), Sent(monkeypatch)
    job = store.create_job()
    sent.take()
    store.apply([new_event(job.id, "progress", "first")])
    first = sent.take()
    store.apply([new_event(job.id, "progress", "second"), new_event(job.id + 1, "succeeded")])
    second = sent.take()

    assert [s for s in first if s.startswith(MAKES_THE_MERGE)], "the session's first fold makes the merge function"
    assert second, "the second batch sent nothing that was seen"
    assert [s for s in second if s.startswith(MAKES_THE_MERGE)] == []
    limit = psycopg._queries.MAX_CACHED_STATEMENT_LENGTH  # noqa: SLF001 - the cliff is psycopg's own
    assert [len(s.encode()) for s in second if len(s.encode()) > limit] == []
    assert store.get_job(job.id).message == "second"


@pytest.mark.parametrize(
    "one_connection",
    [pytest.param({"pool_pre_ping": True}, id="pinged"), pytest.param({"pool_pre_ping": False}, id="as-consumers-do")],
    indirect=True,
)
def test_a_new_session_after_the_old_one_was_dropped_makes_the_merge_again(
    one_connection: sa.Engine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, sent = PostgresJobStore(one_connection), Sent(monkeypatch)
    job = store.create_job()
    store.apply([new_event(job.id, "progress", "before")])
    dropped = _backend_of(one_connection)
    admin = sa.create_engine(postgres_url)
    with admin.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({dropped}, 5000)").scalar_one()
    admin.dispose()
    sent.take()

    try:
        store.apply([new_event(job.id, "succeeded", "after")])
    except StoreUnavailable:
        # Without a ping, the first use of the dropped connection fails (the consumer retries the
        # batch); the pool then connects anew.
        assert not one_connection.pool._pre_ping  # noqa: SLF001
        store.apply([new_event(job.id, "succeeded", "after")])

    assert [s for s in sent.take() if s.startswith(MAKES_THE_MERGE)], "the new session made the merge function"
    assert _backend_of(one_connection) != dropped
    row = store.get_job(job.id)
    assert (row.status, row.message) == (merge.SUCCEEDED, "after")


def test_a_session_that_lost_its_merge_function_is_broken_once_then_makes_it_again(
    one_connection: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # As behind a pooler in transaction mode, or after DISCARD: the session is the same, its
    # temporary function gone. That is no event's fault: broken (retried, nothing dead-lettered),
    # and the next fold on the connection makes the function again.
    store = PostgresJobStore(one_connection)
    job = store.create_job()
    store.apply([new_event(job.id, "progress", "before")])
    backend = _backend_of(one_connection)
    with one_connection.connect() as conn:
        conn.exec_driver_sql("DISCARD TEMP")
        conn.commit()

    with pytest.raises(StoreBroken, match="UndefinedFunction"):
        store.apply([new_event(job.id, "succeeded", "after")])
    # The error is raised once; psycopg's echo of it, as it leaves the aborted pipeline, is not logged.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
    store.apply([new_event(job.id, "succeeded", "after")])

    assert _backend_of(one_connection) == backend  # the same session, its function made again
    row = store.get_job(job.id)
    assert (row.status, row.message) == (merge.SUCCEEDED, "after")


def test_a_session_on_a_server_that_takes_no_writes_is_an_outage_and_is_dropped(one_connection: sa.Engine) -> None:
    # A primary fenced read-only by a failover manager (or a connection that landed on a standby)
    # answers pings and reads but refuses writes: an outage, not bad data, and the connection is
    # dropped so that the next one looks for the primary (target_session_attrs=read-write).
    store = PostgresJobStore(one_connection)
    job = store.create_job()
    store.apply([new_event(job.id, "progress", "before")])
    fenced = _backend_of(one_connection)
    with one_connection.connect() as conn:
        conn.exec_driver_sql("SET SESSION default_transaction_read_only = on")
        conn.commit()

    with pytest.raises(StoreUnavailable, match="ReadOnlySqlTransaction") as raised:
        store.apply([new_event(job.id, "succeeded", "after")])
    assert not isinstance(raised.value, StoreBroken)
    store.apply([new_event(job.id, "succeeded", "after")])

    assert _backend_of(one_connection) != fenced
    row = store.get_job(job.id)
    assert (row.status, row.message) == (merge.SUCCEEDED, "after")
