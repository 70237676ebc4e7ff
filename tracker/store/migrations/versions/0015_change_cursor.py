"""The stream's change log (SPEC §13): an entry for each row of async_status written, in commit order.

- ``async_status_change``: ``seq`` (the cursor: an identity, never reused) and ``job_id`` (NULL:
  rows were deleted), appended by triggers of async_status for every writer (the fold, creation,
  the webhooks' deliverer, an operator's SQL): so the jobs' own rows are written as before (their
  updates stay HOT: an index of cursors on async_status would have added an entry to every index
  of the table for every update, a third more CPU per event; docs/performance.md). Only inserts,
  at the right edge of its primary key. ``tracker.store.cursor`` reads it and prunes it.
- ``async_status_stream``: one row; ``pruned_upto``, the highest cursor pruned: a cursor below it
  cannot be resumed.
- PostgreSQL: every writer takes the transaction-scoped advisory lock 1953653099 ('trak',
  ``tracker.store.cursor.STREAM_LOCK``) before it takes cursors, and holds it until it commits: so
  cursors are given, and committed, one transaction after the other (``tracker.store.cursor`` says
  why). The fold's merge (merge.sql) logs its rows itself, in one insert, and marks its transaction
  (``tracker.logs_changes``) so that the row trigger here, which logs every other writer's rows,
  leaves them alone; a statement trigger logs a deletion. Triggers fire at the end of their
  statement, and those of one event in name order: these are named to come last, so that the
  lock is the last their transaction takes. Inserts now also notify
  ``tracker_async_status`` (0002's function), so that streams hear of new jobs at once.
- SQLite: row triggers; its one write lock already orders the writers' commits.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from tracker.store.tables import BigId

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
_POSTGRESQL = [
    """
    CREATE FUNCTION tracker_log_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(1953653099);
        INSERT INTO async_status_change (job_id) VALUES (CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN NEW.id END);
        RETURN NULL;
    END
    $$
    """,
    # Row triggers, which the fold's transactions skip (their merge logs its rows itself, in one
    # insert): a statement trigger would need the statement's rows as a transition table, which
    # PostgreSQL would copy for every fold whether the trigger then ran or not.
    """
    CREATE TRIGGER tracker_zz_change_logged
    AFTER INSERT OR UPDATE ON async_status
    FOR EACH ROW WHEN (current_setting('tracker.logs_changes', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION tracker_log_change()
    """,
    """
    CREATE FUNCTION tracker_log_deletion() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            IF NOT EXISTS (SELECT FROM tracker_deleted_rows) THEN
                RETURN NULL;
            END IF;
        END IF;
        PERFORM pg_advisory_xact_lock(1953653099);
        INSERT INTO async_status_change (job_id) VALUES (NULL);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER tracker_zz_change_deleted
    AFTER DELETE ON async_status
    REFERENCING OLD TABLE AS tracker_deleted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracker_log_deletion()
    """,
    """
    CREATE TRIGGER tracker_zz_change_truncated
    AFTER TRUNCATE ON async_status
    FOR EACH STATEMENT EXECUTE FUNCTION tracker_log_deletion()
    """,
    # 0002's notifications skipped inserts (no cache holds a row it did not find); a stream wants to
    # hear of new jobs. 0002's function reads the statement's rows as tracker_old_rows: here the new.
    """
    CREATE TRIGGER tracker_async_status_inserted
    AFTER INSERT ON async_status
    REFERENCING NEW TABLE AS tracker_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracker_notify_async_status_changed()
    """,
]

_SQLITE = [
    """
    CREATE TRIGGER tracker_zz_changes_inserted AFTER INSERT ON async_status
    BEGIN
        INSERT INTO async_status_change (job_id) VALUES (NEW.id);
    END
    """,
    """
    CREATE TRIGGER tracker_zz_changes_updated AFTER UPDATE ON async_status
    BEGIN
        INSERT INTO async_status_change (job_id) VALUES (NEW.id);
    END
    """,
    """
    CREATE TRIGGER tracker_zz_changes_deleted AFTER DELETE ON async_status
    BEGIN
        INSERT INTO async_status_change (job_id) VALUES (NULL);
    END
    """,
]

_DROP_POSTGRESQL = [
    "DROP TRIGGER IF EXISTS tracker_async_status_inserted ON async_status",
    "DROP TRIGGER IF EXISTS tracker_zz_change_truncated ON async_status",
    "DROP TRIGGER IF EXISTS tracker_zz_change_deleted ON async_status",
    "DROP FUNCTION IF EXISTS tracker_log_deletion()",
    "DROP TRIGGER IF EXISTS tracker_zz_change_logged ON async_status",
    "DROP FUNCTION IF EXISTS tracker_log_change()",
]

_DROP_SQLITE = [
    "DROP TRIGGER IF EXISTS tracker_zz_changes_deleted",
    "DROP TRIGGER IF EXISTS tracker_zz_changes_updated",
    "DROP TRIGGER IF EXISTS tracker_zz_changes_inserted",
]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "async_status_change",
        sa.Column("seq", BigId, sa.Identity(always=False), primary_key=True),
        sa.Column("job_id", BigId),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "async_status_stream",
        sa.Column("id", sa.Integer, sa.CheckConstraint("id = 1"), primary_key=True, autoincrement=False),
        sa.Column("pruned_upto", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.execute("INSERT INTO async_status_stream (id) VALUES (1)")
    for statement in _POSTGRESQL if postgresql else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for statement in _DROP_POSTGRESQL if postgresql else _DROP_SQLITE:
        op.execute(statement)
    op.drop_table("async_status_stream")
    op.drop_table("async_status_change")
