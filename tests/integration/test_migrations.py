"""The shipped migrations, up and down, on a PostgreSQL database of each test's own and on SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from tracker.store import make_engine, migrations


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


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations._SCRIPTS))  # noqa: SLF001
    return config


def _alembic(engine: sa.Engine, action: Callable[[Config], None]) -> None:
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        action(config)


def _triggers_calling(engine: sa.Engine, function: str) -> tuple[list[str], int]:
    """The triggers on async_status that call ``function``, and how many functions of that name exist."""
    with engine.connect() as conn:
        triggers = (
            conn.exec_driver_sql(
                "SELECT tgname FROM pg_trigger JOIN pg_proc ON pg_proc.oid = tgfoid "
                "WHERE tgrelid = 'async_status'::regclass AND proname = %(function)s ORDER BY tgname",
                {"function": function},
            )
            .scalars()
            .all()
        )
        functions = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_proc WHERE proname = %(function)s", {"function": function}
        ).scalar_one()
    return list(triggers), functions


def _history_foreign_keys(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'async_status_message'::regclass AND contype = 'f'"
        ).scalar_one()


def test_migration_0002_upgrades_and_downgrades(fresh_database: str) -> None:
    engine = make_engine(fresh_database)
    notify = "tracker_notify_async_status_changed"
    try:
        migrations.migrate(engine)
        expected = ["tracker_async_status_deleted", "tracker_async_status_truncated", "tracker_async_status_updated"]
        assert _triggers_calling(engine, notify) == (expected, 1)
        _alembic(engine, lambda config: command.downgrade(config, "0001"))
        assert _triggers_calling(engine, notify) == ([], 0)
        migrations.migrate(engine)
        assert _triggers_calling(engine, notify) == (expected, 1)
    finally:
        engine.dispose()


def test_migration_0003_trades_the_history_key_for_triggers_and_back(fresh_database: str) -> None:
    engine = make_engine(fresh_database)
    forget = "tracker_forget_deleted_jobs"
    expected = ["tracker_async_status_history_deleted", "tracker_async_status_history_truncated"]
    try:
        migrations.migrate(engine)
        assert _triggers_calling(engine, forget) == (expected, 1)
        assert _history_foreign_keys(engine) == 0
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO async_status (id, status, message) VALUES (1, 'PENDING', 'x')")
            conn.exec_driver_sql(
                "INSERT INTO async_status_message (job_id, event_id, occurred_at, seq, message) "
                "VALUES (1, 'a', now(), 0, 'kept'), (2, 'b', now(), 0, 'an orphan')"
            )
        _alembic(engine, lambda config: command.downgrade(config, "0002"))
        assert _triggers_calling(engine, forget) == ([], 0)
        assert _history_foreign_keys(engine) == 1
        with engine.connect() as conn:  # the key could only come back without the orphan
            assert conn.exec_driver_sql("SELECT job_id FROM async_status_message").scalars().all() == [1]
        migrations.migrate(engine)
        assert _triggers_calling(engine, forget) == (expected, 1)
        assert _history_foreign_keys(engine) == 0
    finally:
        engine.dispose()


def test_truncating_the_jobs_empties_the_history(fresh_database: str) -> None:
    engine = make_engine(fresh_database)
    try:
        migrations.migrate(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO async_status (id, status, message) VALUES (1, 'PENDING', 'x')")
            conn.exec_driver_sql(
                "INSERT INTO async_status_message (job_id, event_id, occurred_at, seq, message) "
                "VALUES (1, 'a', now(), 0, 'm')"
            )
            conn.exec_driver_sql("TRUNCATE async_status")
            assert conn.exec_driver_sql("SELECT count(*) FROM async_status_message").scalar_one() == 0
    finally:
        engine.dispose()


def test_the_migrations_do_nothing_on_sqlite_and_still_record_their_revisions(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'tracker.db'}")
    head = ScriptDirectory.from_config(_config()).get_current_head()
    try:
        migrations.migrate(engine)
        _alembic(engine, lambda config: command.downgrade(config, "0001"))
        migrations.migrate(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == head
    finally:
        engine.dispose()


def test_migration_0004_adds_leases_to_a_table_with_rows_and_goes_back(fresh_database: str) -> None:
    engine = make_engine(fresh_database)
    try:
        _alembic(engine, lambda config: command.upgrade(config, "0003"))
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO async_status (id, status, message) VALUES (1, 'PENDING', 'x'), (2, 'PENDING', 'y')"
            )
        migrations.migrate(engine)
        with engine.begin() as conn:
            # Rows from before keep NULL: start_time + TRACKER_JOB_TIMEOUT_S.
            assert conn.exec_driver_sql("SELECT count(*) FROM async_status WHERE deadline_at IS NULL").scalar_one() == 2
            conn.exec_driver_sql("INSERT INTO async_status_lease VALUES (1, 30, now()), (2, 30, now())")
            conn.exec_driver_sql("INSERT INTO async_status_lost VALUES (1, 'timeout', 60, now())")
            conn.exec_driver_sql("DELETE FROM async_status WHERE id = 1")  # takes its lease and decision
            assert conn.exec_driver_sql("SELECT job_id FROM async_status_lease").scalars().all() == [2]
            assert conn.exec_driver_sql("SELECT count(*) FROM async_status_lost").scalar_one() == 0
            conn.exec_driver_sql("TRUNCATE async_status")  # as before: no foreign key refuses it
            assert conn.exec_driver_sql("SELECT count(*) FROM async_status_lease").scalar_one() == 0
        _alembic(engine, lambda config: command.downgrade(config, "0003"))
        with engine.connect() as conn:
            tables = conn.exec_driver_sql("SELECT tablename FROM pg_tables WHERE tablename LIKE 'async_status%%'")
            assert sorted(tables.scalars()) == ["async_status", "async_status_message"]
        assert _triggers_calling(engine, "tracker_forget_deleted_jobs")[1] == 1
        migrations.migrate(engine)
    finally:
        engine.dispose()
