"""PostgreSQL tells listeners which async_status rows changed (the API's row cache drops them).

Statement-level triggers, so every writer is caught (the consumer's fold, an operator's SQL) at
the cost of one trigger call per statement, not per row. Each notification on the channel
``tracker_async_status`` carries up to 300 changed ids, comma-separated (at most 20 bytes each,
so at most 6,000 bytes: PostgreSQL refuses payloads of 8,000); ``*`` means every row (TRUNCATE).
Inserts notify nothing: a reader never caches a row it did not find. SQLite: nothing to do.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
_CREATE = [
    """
    CREATE FUNCTION tracker_notify_async_status_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        ids bigint[];
        i integer;
    BEGIN
        IF TG_OP = 'TRUNCATE' THEN
            PERFORM pg_notify('tracker_async_status', '*');
            RETURN NULL;
        END IF;
        -- The ids before the statement are enough, for UPDATE too: an id a row is given that it
        -- did not have cannot be in any cache (misses are never kept; a row deleted earlier in
        -- the transaction was announced by its DELETE).
        ids := ARRAY(SELECT id FROM tracker_old_rows);
        FOR i IN 1 .. coalesce(array_length(ids, 1), 0) BY 300 LOOP
            PERFORM pg_notify('tracker_async_status', array_to_string(ids[i:i + 299], ','));
        END LOOP;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER tracker_async_status_updated
    AFTER UPDATE ON async_status
    REFERENCING OLD TABLE AS tracker_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracker_notify_async_status_changed()
    """,
    """
    CREATE TRIGGER tracker_async_status_deleted
    AFTER DELETE ON async_status
    REFERENCING OLD TABLE AS tracker_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracker_notify_async_status_changed()
    """,
    """
    CREATE TRIGGER tracker_async_status_truncated
    AFTER TRUNCATE ON async_status
    FOR EACH STATEMENT EXECUTE FUNCTION tracker_notify_async_status_changed()
    """,
]

_DROP = [
    "DROP TRIGGER IF EXISTS tracker_async_status_truncated ON async_status",
    "DROP TRIGGER IF EXISTS tracker_async_status_deleted ON async_status",
    "DROP TRIGGER IF EXISTS tracker_async_status_updated ON async_status",
    "DROP FUNCTION IF EXISTS tracker_notify_async_status_changed()",
]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in _CREATE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in _DROP:
        op.execute(statement)
