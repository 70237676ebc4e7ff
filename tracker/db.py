"""Tables, and the engine factory that makes SQLite and PostgreSQL behave the same for us."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tracker import timefmt

metadata = sa.MetaData()


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """An aware UTC instant in, an aware UTC instant out, on every backend.

    PostgreSQL keeps it as timestamptz; SQLite keeps the naive UTC text, since it has no zones.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware instant")
        utc = value.astimezone(timefmt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timefmt.UTC)
        return value.astimezone(timefmt.UTC)


# SQLite only autoincrements (and never reuses ids) for an INTEGER PRIMARY KEY column.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

async_status = sa.Table(
    "async_status",
    metadata,
    # Traffic Ops' columns
    sa.Column("id", BigId, sa.Identity(always=False), primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("start_time", UTCDateTime, nullable=False, server_default=sa.func.now()),
    sa.Column("end_time", UTCDateTime),
    # what the merge keeps (tracker.merge.JobState)
    sa.Column("initial_message", sa.Text),
    sa.Column("terminal_at", UTCDateTime),
    sa.Column("terminal_seq", sa.BigInteger),
    sa.Column("terminal_event_id", sa.String(36)),
    sa.Column("message_at", UTCDateTime),
    sa.Column("message_seq", sa.BigInteger),
    sa.Column("message_event_id", sa.String(36)),
    sqlite_autoincrement=True,
)

# Message events inside R, kept for the one merge case that needs more than the row. The foreign
# key is SQLite's; on PostgreSQL migration 0003 replaced it by triggers that delete with the job.
async_status_message = sa.Table(
    "async_status_message",
    metadata,
    sa.Column("job_id", BigId, sa.ForeignKey("async_status.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("event_id", sa.String(36), primary_key=True),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)

users = sa.Table(
    "tracker_user",
    metadata,
    sa.Column("username", sa.String(128), primary_key=True),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

login_failures = sa.Table(
    "tracker_login_failure",
    metadata,
    sa.Column("subject", sa.String(200), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("first_at", UTCDateTime, nullable=False),
    sa.Column("locked_until", UTCDateTime),
)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; opens no connection until first used.

    SQLite gets WAL (the API and consumers share the file), a busy timeout, and explicit
    BEGIN so that writers can take the lock up front (``execution_options(immediate=True)``)
    instead of failing to upgrade a read lock. PostgreSQL gets psycopg 3, short connect
    timeouts and pre-ping, so an outage is noticed instead of waited out.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 30, "isolation_level": None}, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg2", "psycopg2cffi"):
        raise ValueError("use postgresql+psycopg:// (psycopg 3) for TRACKER_DATABASE_URL")
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
                        "keepalives_interval": 5, "keepalives_count": 3}
        kwargs.setdefault("pool_pre_ping", True)
        return sa.create_engine(parsed, connect_args=connect_args, **kwargs)
    return sa.create_engine(parsed, **kwargs)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_on_begin(connection: sa.Connection) -> None:
    immediate = connection.get_execution_options().get("immediate", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class StoreUnavailable(RuntimeError):
    """The database could not be reached or dropped the transaction; nothing was committed."""


@contextlib.contextmanager
def unavailable_as_error() -> Iterator[None]:
    """Turn the database being away (connection refused, dropped, locked) into StoreUnavailable.

    Every other database error passes through unchanged: it is a bug or bad data, not an outage.
    """
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)) or exc.connection_invalidated:
            raise StoreUnavailable(_describe(exc)) from exc
        raise


def _describe(exc: sa.exc.DBAPIError) -> str:
    original = exc.orig or exc
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0] if lines else ''}"
