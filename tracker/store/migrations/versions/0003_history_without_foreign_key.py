"""PostgreSQL: the message history's foreign key becomes a trigger that deletes with the job.

The foreign key cost every history row a lookup of its job (a row-level trigger running a query,
~2.5 µs of the database's ~22 µs per event at full ingest: docs/performance.md), while the
only writer of the history, the consumer's fold, inserts rows solely for jobs it has just
locked. What the key gave beyond that was ``ON DELETE CASCADE``; a statement-level trigger on
``async_status`` now does the same for DELETE (the deleted ids, in one statement) and TRUNCATE
(the whole history). SQLite keeps its foreign key: it costs nothing there that matters.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
_UPGRADE = [
    "ALTER TABLE async_status_message DROP CONSTRAINT async_status_message_job_id_fkey",
    """
    CREATE FUNCTION tracker_forget_deleted_jobs() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'TRUNCATE' THEN
            -- Already empty when the history was truncated in the same statement (where
            -- truncating it again would be refused as "in use").
            IF EXISTS (SELECT FROM async_status_message) THEN
                TRUNCATE async_status_message;
            END IF;
        ELSE
            DELETE FROM async_status_message WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER tracker_async_status_history_deleted
    AFTER DELETE ON async_status
    REFERENCING OLD TABLE AS tracker_deleted_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION tracker_forget_deleted_jobs()
    """,
    """
    CREATE TRIGGER tracker_async_status_history_truncated
    AFTER TRUNCATE ON async_status
    FOR EACH STATEMENT EXECUTE FUNCTION tracker_forget_deleted_jobs()
    """,
]

_DOWNGRADE = [
    "DROP TRIGGER IF EXISTS tracker_async_status_history_truncated ON async_status",
    "DROP TRIGGER IF EXISTS tracker_async_status_history_deleted ON async_status",
    "DROP FUNCTION IF EXISTS tracker_forget_deleted_jobs()",
    # The key refuses orphans; the triggers left none, but be sure.
    "DELETE FROM async_status_message AS h WHERE NOT EXISTS (SELECT FROM async_status AS a WHERE a.id = h.job_id)",
    "ALTER TABLE async_status_message ADD CONSTRAINT async_status_message_job_id_fkey "
    "FOREIGN KEY (job_id) REFERENCES async_status (id) ON DELETE CASCADE",
]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in _UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in _DOWNGRADE:
        op.execute(statement)
