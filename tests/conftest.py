"""Shared fixtures: real PostgreSQL, SQLite and RabbitMQ, each test with its own names and rows.

The run stops at once, saying how to start the service, when PostgreSQL or RabbitMQ is not up.
Override where they are with TRACKER_TEST_POSTGRES_URL and TRACKER_TEST_AMQP_URL.
"""

from __future__ import annotations

import os
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

_START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
_START_RABBITMQ = "rabbitmq-server -detached"


def _check_services() -> None:
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1")
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing here
        pytest.exit(
            f"PostgreSQL is not answering at {POSTGRES_URL} ({exc.__class__.__name__}). "
            f"Start it with: {_START_POSTGRES}",
            returncode=3,
        )
    try:
        params = pika.URLParameters(AMQP_URL)
        params.socket_timeout = 3
        params.blocked_connection_timeout = 3
        pika.BlockingConnection(params).close()
    except Exception as exc:  # noqa: BLE001
        pytest.exit(
            f"RabbitMQ is not answering at {AMQP_URL} ({exc.__class__.__name__}). Start it with: {_START_RABBITMQ}",
            returncode=3,
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    if not session.config.getoption("collectonly"):
        _check_services()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session's own, migrated, dropped at the end."""
    name = f"tracker_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
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
            "TRUNCATE async_status, async_status_message, tracker_user, tracker_login_failure RESTART IDENTITY CASCADE"
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


@pytest.fixture
def amqp_names() -> Iterator[dict[str, str]]:
    """Exchange and queue names of this test's own, deleted afterwards."""
    prefix = f"test.{uuid.uuid4().hex[:8]}"
    names = {
        "exchange": f"{prefix}.async_status",
        "queue": f"{prefix}.events",
        "dead_exchange": f"{prefix}.dlx",
        "dead_queue": f"{prefix}.dead",
    }
    yield names
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    for queue in (names["queue"], names["dead_queue"]):
        channel.queue_delete(queue)
    for exchange in (names["exchange"], names["dead_exchange"]):
        channel.exchange_delete(exchange)
    connection.close()


@pytest.fixture
def settings(database_url: str, amqp_names: dict[str, str], tmp_path) -> Settings:
    """Settings for one test: its own database rows and broker names, a fixed secret."""
    return Settings(
        database_url=database_url,
        amqp_url=AMQP_URL,
        secret=TEST_SECRET,
        secret_file=str(tmp_path / "secret"),
        bind="127.0.0.1:0",
        metrics_bind="127.0.0.1:0",  # consumers started by tests never contend for one port
        **amqp_names,
    )
