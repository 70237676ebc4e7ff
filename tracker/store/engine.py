"""Engines that make SQLite and PostgreSQL behave the same for us; outages and refusals as domain errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tracker.errors import StoreRefused, StoreUnavailable


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
        connect_args = {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
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


@contextlib.contextmanager
def unavailable_as_error() -> Iterator[None]:
    """Turn the database being away (connection refused, dropped, locked) into StoreUnavailable.

    Every other database error passes through unchanged: it is a bug or bad data, not an outage.
    """
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if _is_outage(exc):
            raise StoreUnavailable(describe(exc)) from exc
        raise


@contextlib.contextmanager
def refused_as_error() -> Iterator[None]:
    """Turn the database refusing what it was sent (any database error but an outage) into StoreRefused.

    For writes of data that passed validation, where the same data would be refused again. An
    outage passes through unchanged (``unavailable_as_error`` is for that), as does anything
    that is not a database error.
    """
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if _is_outage(exc):
            raise
        original = exc.orig or exc
        raise StoreRefused(type(original).__name__, _first_line(original)) from exc


def _is_outage(exc: sa.exc.DBAPIError) -> bool:
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)) or exc.connection_invalidated


def describe(exc: sa.exc.DBAPIError) -> str:
    """The driver's error class and the first line of its message, e.g. ``OperationalError: …``."""
    original = exc.orig or exc
    return f"{type(original).__name__}: {_first_line(original)}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
