"""Shared fixtures: real PostgreSQL, SQLite and RabbitMQ, each test with its own names and rows.

Only the tests that use a service need it: ``tests/unit`` runs with neither. Once the tests are
collected, the services the selected ones need are checked, and the run stops at once, saying how
to start the one that is not up. A test needs PostgreSQL through the ``postgres_server`` fixture
(``postgres_url``, ``database_url[postgresql]`` …) or the ``postgres`` marker, and RabbitMQ through
``rabbitmq_server`` (``amqp_names``, ``settings`` …) or the ``rabbitmq`` marker. Override where they
are with TRACKER_TEST_POSTGRES_URL and TRACKER_TEST_AMQP_URL.
"""

from __future__ import annotations

import functools
import os
import pathlib
import uuid
from collections.abc import Iterator

import pika
import pytest
import sqlalchemy as sa

from tracker.config import Settings
from tracker.store import make_engine, migrate

POSTGRES_URL = os.environ.get("TRACKER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("TRACKER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
TEST_SECRET = "test-secret-" + "x" * 40

START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
START_RABBITMQ = "rabbitmq-server -detached"


@functools.cache
def _postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used (None when it answers); asked once per run."""
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("select 1")
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing here
        return (
            f"PostgreSQL is not answering at {POSTGRES_URL} ({exc.__class__.__name__}). Start it with: {START_POSTGRES}"
        )
    return None


@functools.cache
def _rabbitmq_problem() -> str | None:
    """Why RabbitMQ cannot be used (None when it answers); asked once per run."""
    try:
        params = pika.URLParameters(AMQP_URL)
        params.socket_timeout = 3
        params.blocked_connection_timeout = 3
        pika.BlockingConnection(params).close()
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing here
        return f"RabbitMQ is not answering at {AMQP_URL} ({exc.__class__.__name__}). Start it with: {START_RABBITMQ}"
    return None


def require_postgres() -> None:
    """Stop the whole run, saying how to start PostgreSQL, unless it answers."""
    problem = _postgres_problem()
    if problem:
        pytest.exit(problem, returncode=3)


def require_rabbitmq() -> None:
    """Stop the whole run, saying how to start RabbitMQ, unless it answers."""
    problem = _rabbitmq_problem()
    if problem:
        pytest.exit(problem, returncode=3)


def _needs_postgres(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return (
        "postgres_server" in getattr(item, "fixturenames", ())
        or item.get_closest_marker("postgres") is not None
        or (callspec is not None and callspec.params.get("database_url") == "postgresql")
    )


def _needs_rabbitmq(item: pytest.Item) -> bool:
    return "rabbitmq_server" in getattr(item, "fixturenames", ()) or item.get_closest_marker("rabbitmq") is not None


FAULT_TEST_TIMEOUT_S = 900  # a fault scenario at TRACKER_FAULTS_SCALE=long runs for minutes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    faults = config.rootpath / "tests" / "faults"
    for item in items:
        if item.path.is_relative_to(faults) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(FAULT_TEST_TIMEOUT_S))


def pytest_collection_finish(session: pytest.Session) -> None:
    # Before the first test: a run that needs a service that is down stops now, not half way.
    if session.config.getoption("collectonly"):
        return
    problems = []
    if any(_needs_postgres(item) for item in session.items):
        problems.append(_postgres_problem())
    if any(_needs_rabbitmq(item) for item in session.items):
        problems.append(_rabbitmq_problem())
    if any(problems):
        pytest.exit("\n".join(problem for problem in problems if problem), returncode=3)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of the PostgreSQL server (its maintenance database); the run stops if it is down."""
    require_postgres()
    return POSTGRES_URL


@pytest.fixture(scope="session")
def rabbitmq_server() -> str:
    """The URL of RabbitMQ; the run stops if it is down."""
    require_rabbitmq()
    return AMQP_URL


@pytest.fixture
def fresh_database(postgres_server: str) -> Iterator[str]:
    """A new, empty PostgreSQL database of this test's own."""
    name = f"tracker_test_{uuid.uuid4().hex[:10]}_mig"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield sa.make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of this test session's own, migrated, dropped at the end."""
    name = f"tracker_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _empty_postgres(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE async_status, async_status_event, tracker_user, tracker_login_failure, tracker_revoked_token "
            "RESTART IDENTITY CASCADE"
        )
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A migrated, empty database: a fresh SQLite file, or the session's PostgreSQL emptied."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tracker.db'}"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        return url
    url = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def new_amqp_names() -> dict[str, str]:
    """Exchange and queue names no other test uses, as Settings' keyword arguments."""
    prefix = f"test.{uuid.uuid4().hex[:8]}"
    return {
        "exchange": f"{prefix}.async_status",
        "queue": f"{prefix}.events",
        "dead_exchange": f"{prefix}.dlx",
        "dead_queue": f"{prefix}.dead",
        "control_exchange": f"{prefix}.control",
    }


@pytest.fixture
def amqp_names(rabbitmq_server: str) -> Iterator[dict[str, str]]:
    """Exchange and queue names of this test's own on the local RabbitMQ, deleted afterwards."""
    names = new_amqp_names()
    yield names
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_server))
    channel = connection.channel()
    for queue in (names["queue"], names["dead_queue"]):
        channel.queue_delete(queue)
    for exchange in (names["exchange"], names["dead_exchange"], names["control_exchange"]):
        channel.exchange_delete(exchange)
    connection.close()


def settings_for(
    database_url: str, amqp_url: str, tmp_path: pathlib.Path, names: dict[str, str] | None = None
) -> Settings:
    """Settings for one test: a database, a broker (one URL or a cluster's list) under names of the
    test's own (new ones unless ``names`` are given), a fixed secret, ports the kernel picks."""
    return Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        secret=TEST_SECRET,
        secret_file=str(tmp_path / "secret"),
        bind="127.0.0.1:0",
        metrics_bind="127.0.0.1:0",  # consumers started by tests never contend for one port
        **(names or new_amqp_names()),
    )


@pytest.fixture
def settings(database_url: str, amqp_names: dict[str, str], tmp_path) -> Settings:
    """Settings for one test: its own database rows and broker names, a fixed secret."""
    return settings_for(database_url, AMQP_URL, tmp_path, amqp_names)
