"""Engines that make SQLite and PostgreSQL behave the same for us; database errors as domain errors
(an outage, a broken database, data refused)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tracker.errors import StoreBroken, StoreRefused, StoreUnavailable


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; opens no connection until first used.

    SQLite gets WAL (the API and consumers share the file), a busy timeout, and explicit
    BEGIN so that writers can take the lock up front (``execution_options(immediate=True)``)
    instead of failing to upgrade a read lock. PostgreSQL gets psycopg 3, short connect
    timeouts and pre-ping, so an outage is noticed instead of waited out. The URL may name several
    hosts (``?host=h1:5432&host=h2:5432&target_session_attrs=read-write``): psycopg tries them in
    turn, and a connection to a server that refuses a write is dropped (``_on_error``), so the
    next one looks for the primary again. Several hosts and no ``target_session_attrs`` get
    ``read-write``: libpq's default (``any``) would take a standby for the primary.
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
        if len(_hosts_of(parsed)) > 1 and "target_session_attrs" not in parsed.query:
            parsed = parsed.update_query_dict({"target_session_attrs": "read-write"})
        connect_args = {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        kwargs.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(parsed, connect_args=connect_args, **kwargs)
        sa.event.listen(engine, "handle_error", _on_error)
        return engine
    return sa.create_engine(parsed, **kwargs)


def _hosts_of(url: sa.URL) -> list[str]:
    """The hosts a PostgreSQL URL names in its query (``host=h1&host=h2``, or ``host=h1,h2``)."""
    given = url.query.get("host", ())
    listed = [given] if isinstance(given, str) else list(given)
    return [host for value in listed for host in value.split(",") if host]


def _on_error(context: sa.engine.ExceptionContext) -> None:
    """Runs on every PostgreSQL error: a connection to a server that will not take writes (a
    standby; a primary fenced, or demoted, while the connection stayed open) counts as lost.

    SQLAlchemy then drops it, and every older connection of the pool at its next checkout, so
    that the next ones look for the primary among the URL's hosts (``target_session_attrs``).
    Pre-ping cannot see this: such a server answers it.
    """
    if getattr(context.original_exception, "sqlstate", None) == _READ_ONLY:
        context.is_disconnect = True


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


# Every database error is one of three kinds (``classify``), and each kind has one answer:
# - unavailable: the database is away or cannot take writes now (a refused or dropped connection, a
#   standby, a server shutting down, a lock or resource it will give back): retry, it passes;
# - broken: it answers, but not as this code needs (a table, column or function missing, a
#   privilege refused, a statement it cannot run): retry once someone repairs it, dead-letter
#   nothing, since no event can cure it;
# - refused: it will not take the data sent (a value it cannot store, a rule on values): that one
#   event is bad input (SPEC §14: only an error about the event's own data dead-letters it).
ErrorKind = Literal["unavailable", "broken", "refused"]
UNAVAILABLE: ErrorKind = "unavailable"
BROKEN: ErrorKind = "broken"
REFUSED: ErrorKind = "refused"
ERROR_KINDS: tuple[ErrorKind, ...] = (UNAVAILABLE, BROKEN, REFUSED)

# PostgreSQL's SQLSTATEs about the data sent: class 22, data exception (a value it cannot store
# or convert: a character its encoding lacks, a number or a time out of range, text too long), and
# class 23, integrity constraint violation (a rule on values: a CHECK, or a unique or foreign key
# an operator added; the store's own keys are written with ON CONFLICT). But not 23502,
# not_null_violation: the parser makes sure every event has what the store writes, so a NOT NULL
# that no event satisfies is a schema out of step with the code (a column added without a
# default), which every event would break.
_REFUSED_CLASSES = ("22", "23")
_NOT_REFUSED = frozenset({"23502"})
# read_only_sql_transaction: a standby, or a primary fenced read-only by its failover manager.
# Another host of the URL may be the primary now: an outage, not a broken database.
_READ_ONLY = "25006"
# SQLite's (extended) result codes, by prefix. About the data sent: a constraint (CHECK, UNIQUE,
# a trigger's RAISE(ABORT); not NOT NULL, as above), a value too big, a type a STRICT table
# refuses. Passing by themselves: busy or locked, the file unreachable or its disk full.
_SQLITE_REFUSED = ("SQLITE_CONSTRAINT", "SQLITE_TOOBIG", "SQLITE_MISMATCH")
_SQLITE_NOT_REFUSED = frozenset({"SQLITE_CONSTRAINT_NOTNULL"})
_SQLITE_UNAVAILABLE = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
    "SQLITE_NOMEM",
    "SQLITE_INTERRUPT",
    "SQLITE_PROTOCOL",
)


def classify(exc: sa.exc.DBAPIError) -> ErrorKind:
    """Which kind of database error ``exc`` is: ``unavailable``, ``broken`` or ``refused`` (see above).

    By the server's own code where there is one (PostgreSQL's SQLSTATE, SQLite's result code);
    else, for errors the driver raised itself, by their DB-API class (a lost connection is
    unavailable; psycopg refusing a value, such as a NUL character, is refused). Whatever is not
    known to be an outage or about the data is broken: retrying it never loses an event, where
    dead-lettering it could lose them all.
    """
    if exc.connection_invalidated:
        return UNAVAILABLE
    original = exc.orig
    sqlstate = getattr(original, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate == _READ_ONLY:
            return UNAVAILABLE
        if sqlstate.startswith(_REFUSED_CLASSES) and sqlstate not in _NOT_REFUSED:
            return REFUSED
        # psycopg's OperationalError: a connection, resource, lock, shutdown or rollback (class
        # 08, 40, 53, 55, 57, 58 …), which the server gives back by itself.
        return UNAVAILABLE if isinstance(exc, sa.exc.OperationalError) else BROKEN
    code = getattr(original, "sqlite_errorname", None)
    if isinstance(code, str):
        if code.startswith(_SQLITE_UNAVAILABLE):
            return UNAVAILABLE
        if code.startswith(_SQLITE_REFUSED) and code not in _SQLITE_NOT_REFUSED:
            return REFUSED
        return BROKEN
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return UNAVAILABLE
    if isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError)):
        return REFUSED
    return BROKEN


@contextlib.contextmanager
def unavailable_as_error() -> Iterator[None]:
    """Turn a database error that no data can cure into a domain error: StoreUnavailable for an
    outage (the database away, read-only, locked), StoreBroken for one that lasts until someone
    repairs the database (its schema, its grants).

    An error about the data sent passes through unchanged (``refused_as_error`` is for that), as
    does anything that is not a database error.
    """
    try:
        yield
    except sa.exc.DBAPIError as exc:
        kind = classify(exc)
        if kind == UNAVAILABLE:
            raise StoreUnavailable(describe(exc)) from exc
        if kind == BROKEN:
            raise StoreBroken(describe(exc)) from exc
        raise


@contextlib.contextmanager
def refused_as_error() -> Iterator[None]:
    """Turn the database refusing the data it was sent (``classify``: refused) into StoreRefused.

    For writes of data that passed validation, where the same data would be refused again. Any
    other database error passes through unchanged (``unavailable_as_error`` is for those), as
    does anything that is not a database error.
    """
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if classify(exc) != REFUSED:
            raise
        original = exc.orig or exc
        raise StoreRefused(type(original).__name__, _first_line(original)) from exc


def describe(exc: sa.exc.DBAPIError) -> str:
    """The driver's error class and the first line of its message, e.g. ``OperationalError: …``."""
    original = exc.orig or exc
    return f"{type(original).__name__}: {_first_line(original)}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
