"""The shipped migrations, up and down, on a PostgreSQL database of each test's own and on SQLite."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from tests.integration.test_api import FAST_PASSWORDS
from tracker import listing
from tracker.errors import StoreUnavailable
from tracker.events import new_event
from tracker.model import TimelineEvent
from tracker.store import make_engine, migrations, open_job_store
from tracker.store.tables import UTCDateTime, async_status, async_status_event
from tracker.users import TokenRevocations, UserStore

"""The shipped migrations, up and down, on a PostgreSQL database of each test's own and on SQLite."""

"""The shipped migrations, up and down, on a PostgreSQL database of each test's own and on SQLite."""


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
        # 0015 adds inserts (SPEC §13's streams hear of new jobs)
        expected = [
            "tracker_async_status_deleted",
            "tracker_async_status_inserted",
            "tracker_async_status_truncated",
            "tracker_async_status_updated",
        ]
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
        _alembic(engine, lambda config: command.upgrade(config, "0004"))  # the history's last revision
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
        _alembic(engine, lambda config: command.upgrade(config, "0004"))
        assert _triggers_calling(engine, forget) == (expected, 1)
        assert _history_foreign_keys(engine) == 0
    finally:
        engine.dispose()


def test_truncating_the_jobs_empties_the_timeline(fresh_database: str) -> None:
    engine = make_engine(fresh_database)
    try:
        migrations.migrate(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO async_status (id, status, message) VALUES (1, 'PENDING', 'x')")
            conn.exec_driver_sql(
                "INSERT INTO async_status_event (job_id, event_id, occurred_at, seq, type, message, received_at) "
                "VALUES (1, 'a', now(), 0, 'progress', 'm', now())"
            )
            conn.exec_driver_sql("TRUNCATE async_status")
            assert conn.exec_driver_sql("SELECT count(*) FROM async_status_event").scalar_one() == 0
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
        _alembic(engine, lambda config: command.upgrade(config, "0004"))
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


# The message history as it was up to 0004 (tracker.store.tables no longer has it).
_OLD_HISTORY = sa.Table(
    "async_status_message",
    sa.MetaData(),
    sa.Column("job_id", sa.BigInteger),
    sa.Column("event_id", sa.String(36)),
    sa.Column("occurred_at", UTCDateTime),
    sa.Column("seq", sa.BigInteger),
    sa.Column("message", sa.Text),
)


_AT = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_fresh_database(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tracker.db'}"
    return str(request.getfixturevalue("fresh_database"))


def _history_at_0004(engine: sa.Engine) -> None:
    """Job 1 SUCCEEDED by event t, with a progress message before it; job 2 PENDING with two messages."""
    at = [_AT + dt.timedelta(seconds=n) for n in range(4)]
    t, p, p1, p2 = (f"00000000-0000-0000-0000-0000000000{name}" for name in ("0t", "0p", "p1", "p2"))
    jobs = [
        {
            "id": 1,
            "status": "SUCCEEDED",
            "message": "done",
            "start_time": at[0],
            "end_time": at[2],
            "initial_message": "x",
            "terminal_at": at[2],
            "terminal_seq": 3,
            "terminal_event_id": t,
            "message_at": at[2],
            "message_seq": 3,
            "message_event_id": t,
        },
        {
            "id": 2,
            "status": "PENDING",
            "message": "half",
            "start_time": at[0],
            "initial_message": "y",
            "message_at": at[3],
            "message_seq": 0,
            "message_event_id": p2,
        },
    ]
    history = [
        # the later one first: the timeline is in merge-key order, not in the table's
        {"job_id": 1, "event_id": t, "occurred_at": at[2], "seq": 3, "message": "done"},
        {"job_id": 1, "event_id": p, "occurred_at": at[1], "seq": 1, "message": "working"},
        {"job_id": 2, "event_id": p2, "occurred_at": at[3], "seq": 0, "message": "half"},
        {"job_id": 2, "event_id": p1, "occurred_at": at[1], "seq": 0, "message": "early"},
    ]
    with engine.begin() as conn:
        for job in jobs:
            conn.execute(sa.insert(async_status).values(**job))
        conn.execute(sa.insert(_OLD_HISTORY), history)


def test_migration_0005_carries_the_message_history_over_into_the_timeline_and_back(any_fresh_database: str) -> None:
    engine = make_engine(any_fresh_database)
    try:
        _alembic(engine, lambda config: command.upgrade(config, "0004"))
        _history_at_0004(engine)
        migrations.migrate(engine)
        store = open_job_store(engine)
        at = [_AT + dt.timedelta(seconds=n) for n in range(4)]
        # The type is exact: the job's terminal event, else progress. The receipt was never recorded.
        assert store.timeline(1) == [
            TimelineEvent("00000000-0000-0000-0000-00000000000p", "progress", at[1], None, 1, "working"),
            TimelineEvent("00000000-0000-0000-0000-00000000000t", "succeeded", at[2], None, 3, "done"),
        ]
        assert store.timeline(2) == [
            TimelineEvent("00000000-0000-0000-0000-0000000000p1", "progress", at[1], None, 0, "early"),
            TimelineEvent("00000000-0000-0000-0000-0000000000p2", "progress", at[3], None, 0, "half"),
        ]
        # The merge reads its history from the timeline now: a failure between the two carried-over
        # messages brings the earlier one back.
        store.apply([new_event(2, "progress", None, occurred_at=at[2])])
        store.apply([new_event(2, "failed", None, occurred_at=at[2] + dt.timedelta(microseconds=1))])
        assert (store.get_job(2).status, store.get_job(2).message) == ("FAILED", "early")
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        assert "async_status_event" in tables
        assert "async_status_message" not in tables

        _alembic(engine, lambda config: command.downgrade(config, "0004"))
        with engine.connect() as conn:
            back = conn.execute(
                sa.select(_OLD_HISTORY.c.job_id, _OLD_HISTORY.c.event_id, _OLD_HISTORY.c.message).order_by(
                    _OLD_HISTORY.c.job_id, _OLD_HISTORY.c.event_id
                )
            ).all()
            assert "async_status_event" not in set(sa.inspect(conn).get_table_names())
        # The message events go back into the history; the message-less heartbeat has no place there.
        assert [tuple(row) for row in back] == [
            (1, "00000000-0000-0000-0000-00000000000p", "working"),
            (1, "00000000-0000-0000-0000-00000000000t", "done"),
            (2, "00000000-0000-0000-0000-0000000000p1", "early"),
            (2, "00000000-0000-0000-0000-0000000000p2", "half"),
        ]
        migrations.migrate(engine)
        assert [event.message for event in open_job_store(engine).timeline(1)] == ["working", "done"]
    finally:
        engine.dispose()


def test_after_migration_0005_deleting_a_job_deletes_its_events(any_fresh_database: str) -> None:
    engine = make_engine(any_fresh_database)
    try:
        _alembic(engine, lambda config: command.upgrade(config, "0004"))
        _history_at_0004(engine)
        migrations.migrate(engine)
        with engine.begin() as conn:
            conn.execute(sa.delete(async_status).where(async_status.c.id == 1))
        with engine.connect() as conn:
            left = conn.execute(sa.select(async_status_event.c.job_id)).scalars().all()
        assert left == [2, 2]
    finally:
        engine.dispose()


_SECTION_11_JOB_COLUMNS = {
    "kind",
    "labels",
    "progress",
    "progress_at",
    "progress_seq",
    "progress_event_id",
    "result",
    "error_code",
    "error_details",
    "cancel_requested_at",
    "cancel_seq",
    "cancel_event_id",
}


_SECTION_11_EVENT_COLUMNS = {"progress", "result", "error_code", "error_details"}


def _columns(engine: sa.Engine, table: str) -> set[str]:
    with engine.connect() as conn:
        return {column["name"] for column in sa.inspect(conn).get_columns(table)}


def test_migration_0008_adds_what_a_job_says_about_itself_to_rows_from_before_and_goes_back(
    any_fresh_database: str,
) -> None:
    engine = make_engine(any_fresh_database)
    try:
        _alembic(engine, lambda config: command.upgrade(config, "0004"))
        _history_at_0004(engine)  # job 1 SUCCEEDED, job 2 PENDING, with their events
        _alembic(engine, lambda config: command.upgrade(config, "0006"))
        assert not _columns(engine, "async_status") & _SECTION_11_JOB_COLUMNS
        migrations.migrate(engine)
        assert _columns(engine, "async_status") >= _SECTION_11_JOB_COLUMNS
        assert _columns(engine, "async_status_event") >= _SECTION_11_EVENT_COLUMNS
        store = open_job_store(engine)
        # Rows from before say nothing of it: their answers are as they were.
        old = store.get_job(1)
        assert (old.kind, old.labels, old.progress, old.result_json, old.error_code, old.cancel_requested_at) == (
            None,
            (),
            None,
            None,
            None,
            None,
        )
        assert store.timeline(1)[0].progress is None
        # and they fold the new fields from now on, with the history they had
        at = _AT + dt.timedelta(seconds=10)
        store.apply([new_event(2, "failed", None, occurred_at=at, progress=90, error_code="lost")])
        failed = store.get_job(2)
        assert (failed.status, failed.message, failed.progress, failed.error_code) == ("FAILED", "half", 90, "lost")

        _alembic(engine, lambda config: command.downgrade(config, "0006"))
        assert not _columns(engine, "async_status") & _SECTION_11_JOB_COLUMNS
        assert not _columns(engine, "async_status_event") & _SECTION_11_EVENT_COLUMNS
        migrations.migrate(engine)
        assert open_job_store(engine).get_job(2).status == "FAILED"  # what 0006 knew of it is kept
    finally:
        engine.dispose()


def test_migration_0007_gives_existing_users_account_ids_and_goes_back(any_fresh_database: str) -> None:
    """Users made before 0007 get an account id each (distinct, never empty); their old tokens
    carry none, so the API refuses them (tests/integration/test_api.py); their passwords still work.
    The table of revoked tokens comes and goes with it."""
    engine = make_engine(any_fresh_database)
    before = ScriptDirectory.from_config(_config()).get_revision("0007").down_revision
    assert isinstance(before, str)
    try:
        _alembic(engine, lambda config: command.upgrade(config, before))
        passwords = FAST_PASSWORDS
        with engine.begin() as conn:
            for name in ("alice", "bob"):
                conn.execute(
                    sa.text(
                        "INSERT INTO tracker_user (username, role, password_hash, created_at) "
                        "VALUES (:name, 'operations', :hash, :at)"
                    ),
                    {"name": name, "hash": passwords.hash("pw-" + name), "at": _AT.replace(tzinfo=None)},
                )
        _alembic(engine, lambda config: command.upgrade(config, "0007"))
        with engine.connect() as conn:
            ids = {row[0]: row[1] for row in conn.execute(sa.text("SELECT username, account_id FROM tracker_user"))}
        assert set(ids) == {"alice", "bob"}
        assert all(re.fullmatch("[0-9a-f]{32}", account) for account in ids.values())
        assert ids["alice"] != ids["bob"]
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # never without one
            conn.execute(
                sa.text(
                    "INSERT INTO tracker_user (username, role, password_hash, created_at) "
                    "VALUES ('carol', 'operations', 'x', :at)"
                ),
                {"at": _AT.replace(tzinfo=None)},
            )
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            assert {"seq", "token_id", "expires_at"} <= {
                c["name"] for c in inspector.get_columns("tracker_revoked_token")
            }
            assert [i["column_names"] for i in inspector.get_indexes("tracker_revoked_token") if not i["unique"]] == [
                ["expires_at"]
            ]
        migrations.migrate(engine)
        TokenRevocations(engine).revoke("t" * 32, int(_AT.timestamp()) + 10**9)
        users = UserStore(engine, passwords)
        alice = users.authenticate("alice", "pw-alice")
        assert alice is not None and alice.account_id == ids["alice"]
        assert users.add("carol", "read-only", "pw").account_id not in ids.values()

        _alembic(engine, lambda config: command.downgrade(config, before))
        with engine.connect() as conn:
            columns = {column["name"] for column in sa.inspect(conn).get_columns("tracker_user")}
            names = conn.execute(sa.text("SELECT username FROM tracker_user ORDER BY username")).scalars().all()
            tables = set(sa.inspect(conn).get_table_names())
        assert "account_id" not in columns
        assert names == ["alice", "bob", "carol"]
        assert "tracker_revoked_token" not in tables
        migrations.migrate(engine)
    finally:
        engine.dispose()


class FakeTime:
    """A clock and a sleep that only move when slept; ``on_sleep`` runs after each sleep."""

    def __init__(self, on_sleep: Callable[[int], None] = lambda _n: None) -> None:
        self.now = 0.0
        self.sleeps = 0
        self._on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        self._on_sleep(self.sleeps)


def test_the_wait_for_the_database_returns_once_it_answers_and_says_so_once(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tracker.store.migrations")
    folder = tmp_path / "not-mounted-yet"  # SQLite cannot open a file there: as a server not up yet
    engine = make_engine(f"sqlite:///{folder / 'tracker.db'}")
    time = FakeTime(on_sleep=lambda n: folder.mkdir() if n == 9 else None)
    migrations.wait_until_answering(engine, 60, clock=time.clock, sleep=time.sleep)
    engine.dispose()
    assert time.sleeps == 9 and 20 < time.now < 60  # 0.25 s doubling to 5 s between tries
    said = [record.getMessage() for record in caplog.records]
    assert said[0] == "database unavailable: OperationalError: unable to open database file; waiting up to 60 s for it"
    assert said[-1].startswith("database answers after ")
    again = said[1:-1]  # every ten seconds while it lasts, not at every try
    assert 1 <= len(again) <= time.now // 10
    assert all(line.startswith("database unavailable (for ") for line in again)


@pytest.mark.parametrize("within_s", [0, 2.5])
def test_the_wait_for_the_database_gives_up_after_its_time(tmp_path, within_s: float) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'tracker.db'}")
    time = FakeTime()
    with pytest.raises(StoreUnavailable) as raised:
        migrations.wait_until_answering(engine, within_s, clock=time.clock, sleep=time.sleep)
    engine.dispose()
    waited = f" within {within_s:g} s" if within_s else ""
    assert str(raised.value) == f"no answer{waited} (OperationalError: unable to open database file)"
    assert time.now <= within_s


_SECTION_13_JOB_COLUMNS = {"notify_url", "notify_state", "notify_attempts"}


def _deliveries(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT job_id FROM async_status_delivery ORDER BY job_id").scalars().all()


def test_migration_0012_adds_webhooks_to_rows_from_before_and_goes_back(any_fresh_database: str) -> None:
    engine = make_engine(any_fresh_database)
    try:
        _alembic(engine, lambda config: command.upgrade(config, "0004"))
        _history_at_0004(engine)  # job 1 SUCCEEDED, job 2 PENDING
        if engine.dialect.name == "postgresql":  # those two took their ids without the sequence
            with engine.begin() as conn:
                conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('async_status', 'id'), 2)")
        _alembic(engine, lambda config: command.upgrade(config, "0008"))
        assert not _columns(engine, "async_status") & _SECTION_13_JOB_COLUMNS
        migrations.migrate(engine)
        assert _columns(engine, "async_status") >= _SECTION_13_JOB_COLUMNS
        store = open_job_store(engine)
        old = store.get_job(2)
        assert (old.notify_url, old.notify_state, old.notify_attempts) == (None, None, None)
        # An old job ends without a webhook; a new one with a notify_url has its delivery queued.
        new = store.create_job("x", notify_url="https://hooks.test/x")
        applied = store.apply([new_event(2, "succeeded", None), new_event(new.id, "failed", None)])
        assert applied.queued_deliveries == (new.id,)
        assert _deliveries(engine) == [new.id]
        with engine.begin() as conn:  # deleting the job takes its delivery (PostgreSQL: the trigger of 0003)
            conn.execute(sa.delete(async_status).where(async_status.c.id == new.id))
        assert _deliveries(engine) == []
        again = store.create_job("y", notify_url="https://hooks.test/y")
        store.apply([new_event(again.id, "succeeded", None)])
        assert _deliveries(engine) == [again.id]
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.exec_driver_sql("TRUNCATE async_status")  # as before: no foreign key refuses it
            assert _deliveries(engine) == []

        _alembic(engine, lambda config: command.downgrade(config, "0008"))
        assert not _columns(engine, "async_status") & _SECTION_13_JOB_COLUMNS
        with engine.connect() as conn:
            assert "async_status_delivery" not in set(sa.inspect(conn).get_table_names())
        with engine.begin() as conn:  # 0005's trigger function again: deleting a job still works
            conn.execute(sa.delete(async_status))
        migrations.migrate(engine)
        assert _deliveries(engine) == []
    finally:
        engine.dispose()


def test_migration_0015_stamps_changes_from_then_on_and_goes_back(any_fresh_database: str) -> None:
    engine = make_engine(any_fresh_database)
    try:
        _alembic(engine, lambda config: command.upgrade(config, "0014"))
        store = open_job_store(engine)
        old = store.create_job("before 0015")
        migrations.migrate(engine)
        store = open_job_store(engine)
        start = store.stream_position()
        assert start == 0
        assert store.changed_since(0, listing.JobQuery(), 10).rows == ()  # rows from before are not in the log
        store.apply([new_event(old.id, "succeeded", "done")])
        new = store.create_job("after")
        changes = store.changed_since(start, listing.JobQuery(), 10)
        assert [job.id for _, job in changes.rows] == [old.id, new.id]

        _alembic(engine, lambda config: command.downgrade(config, "0014"))
        with engine.connect() as conn:
            assert "async_status_change" not in set(sa.inspect(conn).get_table_names())
        with engine.begin() as conn:  # the triggers went with it: writing and deleting still work
            conn.execute(sa.update(async_status).values(message="again"))
            conn.execute(sa.delete(async_status))
        migrations.migrate(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("before", "table", "name"),
    [
        ("0013", "async_status", "ix_async_status_pending_cancel_requested"),
        ("0015", "async_status_change", "ix_async_status_change_deletions"),
    ],
)
def test_migrations_0014_and_0016_add_their_index_and_go_back(
    any_fresh_database: str, before: str, table: str, name: str
) -> None:
    engine = make_engine(any_fresh_database)

    def indexes() -> set[str]:
        with engine.connect() as conn:
            return {str(index["name"]) for index in sa.inspect(conn).get_indexes(table)}

    try:
        _alembic(engine, lambda config: command.upgrade(config, before))
        assert name not in indexes()
        migrations.migrate(engine)
        assert name in indexes()
        _alembic(engine, lambda config: command.downgrade(config, before))
        assert name not in indexes()
        migrations.migrate(engine)
        assert name in indexes()
    finally:
        engine.dispose()


_SECTION_11_INDEXES = {"ix_async_status_pending_by_id", "ix_async_status_kind", "ix_async_status_error_code"}


def _indexes(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {index["name"] for index in sa.inspect(conn).get_indexes("async_status") if index["name"]}


def _fillfactor(engine: sa.Engine) -> list[str] | None:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT reloptions FROM pg_class WHERE relname = 'async_status'").scalar_one()


@pytest.mark.parametrize("path", ["tracker migrate", "a transaction of the caller's"])
def test_migration_0013_indexes_the_lists_filters_and_goes_back(any_fresh_database: str, path: str) -> None:
    engine = make_engine(any_fresh_database)
    postgresql = engine.dialect.name == "postgresql"
    expected = _SECTION_11_INDEXES
    try:
        _alembic(engine, lambda config: command.upgrade(config, "0012"))
        store = open_job_store(engine)
        old = store.create_job("before", kind="build", labels=(("env", "prod"),))
        assert not _indexes(engine) & expected
        if path == "tracker migrate":  # alembic's own transaction: CONCURRENTLY on PostgreSQL
            migrations.migrate(engine)
        else:
            _alembic(engine, lambda config: command.upgrade(config, "0013"))
        assert _indexes(engine) >= expected
        if postgresql:
            assert _fillfactor(engine) == ["fillfactor=85"]
            with engine.connect() as conn:  # built whole: no invalid index left behind
                assert not conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_index WHERE indrelid = 'async_status'::regclass AND NOT indisvalid"
                ).scalar_one()
        page = store.list_jobs(listing.parse_query({"kind": "build", "label": "env=prod"}))
        assert [job.id for job in page.jobs] == [old.id]
        _alembic(engine, lambda config: command.downgrade(config, "0012"))
        assert not _indexes(engine) & expected
        if postgresql:
            assert _fillfactor(engine) is None
        migrations.migrate(engine)
        assert _indexes(engine) >= expected
    finally:
        engine.dispose()
