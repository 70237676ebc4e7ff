"""Webhooks (SPEC §13): a job's notify_url and its delivery's state, and the deliveries to be made.

- ``async_status`` gains ``notify_url`` (text, given at creation), ``notify_state`` (text:
  ``pending``, ``delivered``, ``failed``) and ``notify_attempts`` (integer): nullable, without a
  default, so adding them changes the catalogue and rewrites no row, as 0008's did (its docstring
  has the figures of such an ALTER on 5,000,000 rows). Rows from before have no webhook.
- ``async_status_delivery``: a row per delivery still to be made, inserted by the fold in the
  transaction that ends its job, with an index on ``due_at`` (the deliverers take the due ones
  first; the table holds only deliveries in progress, so it stays small).
- PostgreSQL: a row-level trigger on that table's inserts notifies the channel
  ``tracker_webhooks``, which the consumers' deliverers listen on, so a delivery starts within
  milliseconds of the commit that ends its job (a row-level trigger fires only for rows inserted:
  the fold's insert runs in every batch, mostly inserting none). Deleted with their job, as the
  job's events are: by the statement-level trigger function of 0003, which now empties this table
  too (so ``TRUNCATE async_status`` works as before); on SQLite by a foreign key.

Revision ID: 0012
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from tracker.store.tables import BigId, UTCDateTime

revision = "0012"
down_revision = "0008"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
_NOTIFY = [
    """
    CREATE FUNCTION tracker_notify_delivery_queued() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        -- No payload: the deliverers take whatever is due; notifications alike in one transaction
        -- are delivered once.
        PERFORM pg_notify('tracker_webhooks', '');
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER tracker_delivery_queued
    AFTER INSERT ON async_status_delivery
    FOR EACH ROW EXECUTE FUNCTION tracker_notify_delivery_queued()
    """,
]

_FORGET_0012 = """
CREATE OR REPLACE FUNCTION tracker_forget_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- Already empty when truncated in the same statement (truncating again would be refused).
        IF EXISTS (SELECT FROM async_status_event) THEN
            TRUNCATE async_status_event;
        END IF;
        IF EXISTS (SELECT FROM async_status_lease) THEN
            TRUNCATE async_status_lease;
        END IF;
        IF EXISTS (SELECT FROM async_status_lost) THEN
            TRUNCATE async_status_lost;
        END IF;
        IF EXISTS (SELECT FROM async_status_delivery) THEN
            TRUNCATE async_status_delivery;
        END IF;
    ELSE
        DELETE FROM async_status_event WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
        DELETE FROM async_status_lease WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
        DELETE FROM async_status_lost WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
        DELETE FROM async_status_delivery WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
    END IF;
    RETURN NULL;
END
$$
"""

# Migration 0005's function, as it was.
_FORGET_0005 = """
CREATE OR REPLACE FUNCTION tracker_forget_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- Already empty when truncated in the same statement (truncating again would be refused).
        IF EXISTS (SELECT FROM async_status_event) THEN
            TRUNCATE async_status_event;
        END IF;
        IF EXISTS (SELECT FROM async_status_lease) THEN
            TRUNCATE async_status_lease;
        END IF;
        IF EXISTS (SELECT FROM async_status_lost) THEN
            TRUNCATE async_status_lost;
        END IF;
    ELSE
        DELETE FROM async_status_event WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
        DELETE FROM async_status_lease WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
        DELETE FROM async_status_lost WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
    END IF;
    RETURN NULL;
END
$$
"""


def _job_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("notify_url", sa.Text),
        sa.Column("notify_state", sa.Text),
        sa.Column("notify_attempts", sa.Integer),
    ]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for column in _job_columns():
        op.add_column("async_status", column)
    job_id = (
        sa.Column("job_id", BigId, primary_key=True)
        if postgresql
        else sa.Column("job_id", BigId, sa.ForeignKey("async_status.id", ondelete="CASCADE"), primary_key=True)
    )
    op.create_table(
        "async_status_delivery",
        job_id,
        sa.Column("queued_at", UTCDateTime, nullable=False),
        sa.Column("due_at", UTCDateTime, nullable=False),
        sa.Column("claim", sa.String(36)),
    )
    op.create_index("ix_async_status_delivery_due", "async_status_delivery", ["due_at"])
    if postgresql:
        for statement in _NOTIFY:
            op.execute(statement)
        op.execute(_FORGET_0012)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FORGET_0005)
        op.execute("DROP TRIGGER IF EXISTS tracker_delivery_queued ON async_status_delivery")
        op.execute("DROP FUNCTION IF EXISTS tracker_notify_delivery_queued()")
    op.drop_table("async_status_delivery")
    for column in reversed(_job_columns()):
        op.drop_column("async_status", column.name)
