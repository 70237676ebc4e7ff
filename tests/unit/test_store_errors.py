"""Database errors become domain errors at the store's edge: an outage, a broken database, or data refused."""

from __future__ import annotations

import sqlite3

import psycopg.errors
import pytest
import sqlalchemy as sa

from tracker.errors import StoreBroken, StoreRefused, StoreUnavailable
from tracker.store import make_engine, refused_as_error, unavailable_as_error
from tracker.store.engine import classify


class CheckViolation(Exception):
    """Stands for a driver's exception that carries no code of the server's (a driver's own check)."""

    def __str__(self) -> str:
        return 'new row for relation "async_status" violates check constraint "no_poison"\nDETAIL: ...'


def driver_error(kind: type[sa.exc.DBAPIError], invalidated: bool = False) -> sa.exc.DBAPIError:
    return kind("UPDATE async_status ...", {}, CheckViolation(), connection_invalidated=invalidated)


def wrapped(original: Exception, kind: type[sa.exc.DBAPIError]) -> sa.exc.DBAPIError:
    """``original`` as SQLAlchemy wraps a driver's exception."""
    return kind("UPDATE async_status ...", {}, original)


def both(exc: BaseException) -> None:
    """Raise ``exc`` through the two translations, in the order the stores nest them."""
    with refused_as_error(), unavailable_as_error():
        raise exc


@pytest.mark.parametrize("kind", [sa.exc.IntegrityError, sa.exc.DataError])
def test_data_the_database_refuses_is_store_refused_chained_from_the_driver(kind: type[sa.exc.DBAPIError]) -> None:
    original = driver_error(kind)
    with pytest.raises(StoreRefused) as raised:
        both(original)
    assert raised.value.error == "CheckViolation"
    assert (
        str(raised.value) == 'CheckViolation: new row for relation "async_status" violates check constraint "no_poison"'
    )
    assert raised.value.__cause__ is original


@pytest.mark.parametrize(
    "original",
    [
        driver_error(sa.exc.OperationalError),
        driver_error(sa.exc.InterfaceError),
        driver_error(sa.exc.IntegrityError, invalidated=True),
    ],
)
def test_an_outage_is_store_unavailable_not_a_refusal(original: sa.exc.DBAPIError) -> None:
    with pytest.raises(StoreUnavailable) as raised:
        both(original)
    assert type(raised.value) is StoreUnavailable
    assert raised.value.__cause__ is original
    with pytest.raises(type(original)), refused_as_error():
        raise original


# PostgreSQL's errors as psycopg raises them (each class carries its SQLSTATE), and what they are.
POSTGRESQL = [
    # about the event's data: class 22 and 23
    (psycopg.errors.CheckViolation, sa.exc.IntegrityError, "refused"),  # 23514, an operator's CHECK
    (psycopg.errors.UniqueViolation, sa.exc.IntegrityError, "refused"),  # 23505
    (psycopg.errors.UntranslatableCharacter, sa.exc.DataError, "refused"),  # 22P05
    (psycopg.errors.NumericValueOutOfRange, sa.exc.DataError, "refused"),  # 22003
    (psycopg.errors.StringDataRightTruncation, sa.exc.DataError, "refused"),  # 22001
    (psycopg.errors.DatetimeFieldOverflow, sa.exc.DataError, "refused"),  # 22008
    # the schema or the grants: no event can cure them
    (psycopg.errors.NotNullViolation, sa.exc.IntegrityError, "broken"),  # 23502: a column the code does not fill
    (psycopg.errors.UndefinedTable, sa.exc.ProgrammingError, "broken"),  # 42P01
    (psycopg.errors.UndefinedColumn, sa.exc.ProgrammingError, "broken"),  # 42703
    (psycopg.errors.UndefinedFunction, sa.exc.ProgrammingError, "broken"),  # 42883: the session's merge function
    (psycopg.errors.InsufficientPrivilege, sa.exc.ProgrammingError, "broken"),  # 42501
    (psycopg.errors.DatatypeMismatch, sa.exc.ProgrammingError, "broken"),  # 42804
    (psycopg.errors.FeatureNotSupported, sa.exc.NotSupportedError, "broken"),  # 0A000
    (psycopg.errors.InternalError_, sa.exc.InternalError, "broken"),  # XX000
    # outages: they pass by themselves, or another host is the primary
    (psycopg.errors.ReadOnlySqlTransaction, sa.exc.InternalError, "unavailable"),  # 25006: a standby
    (psycopg.errors.AdminShutdown, sa.exc.OperationalError, "unavailable"),  # 57P01
    (psycopg.errors.CannotConnectNow, sa.exc.OperationalError, "unavailable"),  # 57P03: starting, or in recovery
    (psycopg.errors.SerializationFailure, sa.exc.OperationalError, "unavailable"),  # 40001
    (psycopg.errors.DeadlockDetected, sa.exc.OperationalError, "unavailable"),  # 40P01
    (psycopg.errors.DiskFull, sa.exc.OperationalError, "unavailable"),  # 53100
    (psycopg.errors.QueryCanceled, sa.exc.OperationalError, "unavailable"),  # 57014
]


@pytest.mark.parametrize(("error", "wrapper", "kind"), POSTGRESQL, ids=[e.__name__ for e, _, _ in POSTGRESQL])
def test_postgresql_errors_are_told_apart_by_their_sqlstate(error, wrapper, kind) -> None:
    exc = wrapped(error("the server's message"), wrapper)
    assert classify(exc) == kind
    expected = {"refused": StoreRefused, "broken": StoreBroken, "unavailable": StoreUnavailable}[kind]
    with pytest.raises(expected) as raised:
        both(exc)
    assert type(raised.value) is expected
    assert raised.value.__cause__ is exc


def test_a_broken_database_is_retried_like_an_outage_but_named_apart() -> None:
    exc = wrapped(psycopg.errors.UndefinedColumn('column "message" does not exist'), sa.exc.ProgrammingError)
    with pytest.raises(StoreUnavailable) as raised:  # whoever retries an outage retries this too
        both(exc)
    assert isinstance(raised.value, StoreBroken)
    assert str(raised.value) == 'UndefinedColumn: column "message" does not exist'


def test_psycopgs_own_refusal_of_a_value_is_a_refusal() -> None:
    # psycopg refuses NUL characters itself, with no SQLSTATE: about the data all the same.
    exc = wrapped(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), sa.exc.DataError)
    assert classify(exc) == "refused"
    lost = wrapped(
        psycopg.OperationalError("consuming input failed: server closed the connection"), sa.exc.OperationalError
    )
    assert classify(lost) == "unavailable"
    bug = wrapped(
        psycopg.ProgrammingError("the query has 2 placeholders but 1 parameters were passed"), sa.exc.ProgrammingError
    )
    assert classify(bug) == "broken"


def sqlite_error(statement: str, setup: str = "") -> sa.exc.DBAPIError:
    """The error a real SQLite gives for ``statement``, as SQLAlchemy wraps it."""
    engine = sa.create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (a INTEGER CHECK (a < 5), b INTEGER NOT NULL)")
            if setup:
                conn.exec_driver_sql(setup)
        with pytest.raises(sa.exc.DBAPIError) as raised, engine.begin() as conn:
            conn.exec_driver_sql(statement)
        assert isinstance(raised.value.orig, sqlite3.Error)
        return raised.value
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("statement", "setup", "kind"),
    [
        ("INSERT INTO t VALUES (7, 1)", "", "refused"),  # a CHECK
        (
            "INSERT INTO t VALUES (3, 1)",
            "CREATE TRIGGER no_three BEFORE INSERT ON t WHEN NEW.a = 3 BEGIN SELECT RAISE(ABORT, 'no'); END",
            "refused",  # a trigger's refusal, as tests/integration/test_refused_events.py makes one
        ),
        ("INSERT INTO t VALUES (1, NULL)", "", "broken"),  # NOT NULL: the schema, not the event
        ("INSERT INTO t (a, gone) VALUES (1, 1)", "", "broken"),  # a column missing
        ("SELECT * FROM missing", "", "broken"),  # a table missing
    ],
)
def test_sqlite_errors_are_told_apart_by_their_result_code(statement: str, setup: str, kind: str) -> None:
    assert classify(sqlite_error(statement, setup)) == kind


def test_a_locked_sqlite_database_is_an_outage() -> None:
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorname = "SQLITE_BUSY"  # as sqlite3 sets it
    assert classify(wrapped(locked, sa.exc.OperationalError)) == "unavailable"


def test_what_is_not_a_database_error_passes_through() -> None:
    with pytest.raises(KeyError):
        both(KeyError("a bug"))


@pytest.mark.parametrize(
    ("query", "attrs"),
    [
        ("host=h1:5432&host=h2:5432", "read-write"),  # several hosts: only the primary will do
        ("host=h1,h2&port=5432,5432", "read-write"),
        ("host=h1:5432&host=h2:5432&target_session_attrs=primary", "primary"),  # as asked
        ("host=h1:5432", None),  # one host: as libpq would
    ],
)
def test_several_hosts_mean_the_one_that_takes_writes_unless_the_url_says(query: str, attrs: str | None) -> None:
    engine = make_engine(f"postgresql+psycopg://tracker@/tracker?{query}")  # opens no connection
    _args, params = engine.dialect.create_connect_args(engine.url)
    assert params.get("target_session_attrs") == attrs
    assert params["host"] == ("h1" if query == "host=h1:5432" else "h1,h2")
    engine.dispose()
