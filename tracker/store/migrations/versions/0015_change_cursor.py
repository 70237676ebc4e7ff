"""The stream's cursor (SPEC §13): each row of async_status carries the position of its last change.

- ``async_status.change_seq`` (bigint, nullable, no default: adding it rewrites no row) with an
  index: a stream reads the rows changed since a cursor, in cursor order. Rows from before have
  none until they next change.
- ``async_status_stream``: one row. ``reset_before``: a cursor below it cannot be resumed (rows
  were deleted since; the client reloads). On SQLite also ``last_change``, the counter the
  cursors are taken from.
- PostgreSQL: cursors come from the sequence ``async_status_change_seq``, and are assigned in
  commit order (``tracker.store.cursor`` says why that matters and how): every writer takes the
  transaction-scoped advisory lock ``STREAM_LOCK`` just before it takes a cursor, as the last
  lock of its transaction, and keeps it until it commits. The fold takes both in merge.sql; every
  other writer (creation, the webhooks' deliverer, an operator's SQL) gets them from the row
  triggers here, which leave alone a row whose writer stamped it itself. Deleting rows (a statement
  trigger) or TRUNCATE moves ``reset_before`` past every cursor given so far. Inserts now notify
  ``tracker_async_status`` too (0002's function), so that streams hear of new jobs at once.
- SQLite: writers already take the database's one write lock for their whole transaction, so
  commit order is the order of writing; row triggers take the next value of ``last_change``.

Revision ID: 0015
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0012"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
# 0x7472616b = 'trak': the advisory lock of the cursor (tracker.store.cursor.STREAM_LOCK).
_POSTGRESQL = [
    "CREATE SEQUENCE async_status_change_seq AS bigint",
    """
    CREATE FUNCTION tracker_stamp_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(1953653099);
        NEW.change_seq := nextval('async_status_change_seq');
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER tracker_async_status_stamped
    BEFORE INSERT ON async_status
    FOR EACH ROW EXECUTE FUNCTION tracker_stamp_change()
    """,
    """
    CREATE TRIGGER tracker_async_status_restamped
    BEFORE UPDATE ON async_status
    FOR EACH ROW WHEN (NEW.change_seq IS NOT DISTINCT FROM OLD.change_seq)
    EXECUTE FUNCTION tracker_stamp_change()
    """,
    """
    CREATE FUNCTION tracker_stream_reset() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            IF NOT EXISTS (SELECT FROM tracker_gone_rows) THEN
                RETURN NULL;
            END IF;
        END IF;
        PERFORM pg_advisory_xact_lock(1953653099);
        UPDATE async_status_stream SET reset_before = nextval('async_status_change_seq');
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER tracker_async_status_gone
    AFTER DELETE ON async_status
    REFERENCING OLD TABLE AS tracker_gone_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracker_stream_reset()
    """,
    """
    CREATE TRIGGER tracker_async_status_emptied
    AFTER TRUNCATE ON async_status
    FOR EACH STATEMENT EXECUTE FUNCTION tracker_stream_reset()
    """,
]

# 0002's notifications skipped inserts (no cache holds a row it did not find); a stream wants to
# hear of new jobs. 0002's function reads the statement's rows under the name tracker_old_rows,
# which here are the new ones.
_POSTGRESQL.append(
    """
    CREATE TRIGGER tracker_async_status_inserted
    AFTER INSERT ON async_status
    REFERENCING NEW TABLE AS tracker_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracker_notify_async_status_changed()
    """
)

_SQLITE = [
    """
    CREATE TRIGGER tracker_async_status_stamped AFTER INSERT ON async_status
    BEGIN
        UPDATE async_status_stream SET last_change = last_change + 1;
        UPDATE async_status SET change_seq = (SELECT last_change FROM async_status_stream) WHERE id = NEW.id;
    END
    """,
    """
    CREATE TRIGGER tracker_async_status_restamped AFTER UPDATE ON async_status
    WHEN NEW.change_seq IS OLD.change_seq
    BEGIN
        UPDATE async_status_stream SET last_change = last_change + 1;
        UPDATE async_status SET change_seq = (SELECT last_change FROM async_status_stream) WHERE id = NEW.id;
    END
    """,
    """
    CREATE TRIGGER tracker_async_status_gone AFTER DELETE ON async_status
    BEGIN
        UPDATE async_status_stream SET last_change = last_change + 1, reset_before = last_change + 1;
    END
    """,
]

_DROP_POSTGRESQL = [
    "DROP TRIGGER IF EXISTS tracker_async_status_inserted ON async_status",
    "DROP TRIGGER IF EXISTS tracker_async_status_emptied ON async_status",
    "DROP TRIGGER IF EXISTS tracker_async_status_gone ON async_status",
    "DROP FUNCTION IF EXISTS tracker_stream_reset()",
    "DROP TRIGGER IF EXISTS tracker_async_status_restamped ON async_status",
    "DROP TRIGGER IF EXISTS tracker_async_status_stamped ON async_status",
    "DROP FUNCTION IF EXISTS tracker_stamp_change()",
    "DROP SEQUENCE IF EXISTS async_status_change_seq",
]

_DROP_SQLITE = [
    "DROP TRIGGER IF EXISTS tracker_async_status_gone",
    "DROP TRIGGER IF EXISTS tracker_async_status_restamped",
    "DROP TRIGGER IF EXISTS tracker_async_status_stamped",
]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.add_column("async_status", sa.Column("change_seq", sa.BigInteger))
    op.create_index("ix_async_status_change_seq", "async_status", ["change_seq"])
    op.create_table(
        "async_status_stream",
        sa.Column("id", sa.Integer, sa.CheckConstraint("id = 1"), primary_key=True, autoincrement=False),
        sa.Column("last_change", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reset_before", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.execute("INSERT INTO async_status_stream (id) VALUES (1)")
    for statement in _POSTGRESQL if postgresql else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for statement in _DROP_POSTGRESQL if postgresql else _DROP_SQLITE:
        op.execute(statement)
    op.drop_table("async_status_stream")
    op.drop_index("ix_async_status_change_seq", "async_status")
    op.drop_column("async_status", "change_seq")
