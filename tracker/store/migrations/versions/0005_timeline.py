"""The timeline (SPEC §7): every accepted event of a job once, in ``async_status_event``.

It replaces the message history (``async_status_message``), which held only the message events
inside *R* that the merge may need again: the new table holds those too, so the merge reads its
history from it, and an event is written once, not twice.

- One row per event, primary key (job_id, event_id): duplicates collapse, and the key's index
  serves both the timeline of a job and the merge's history lookup. No other index: each one
  would be written for every event on the hottest path.
- The history's rows are carried over. Their type is known exactly: a kept message event is the
  job's earliest terminal event (``terminal_event_id``) or else a progress event, since any other
  terminal event comes after that one and so was never kept. Their ``received_at`` was never
  recorded and stays NULL. Events the history did not keep (no message, or after the earliest
  terminal event) are not known and cannot be carried over.
- Deleted with their job: on SQLite by a foreign key; on PostgreSQL, as the history was since
  0003, by the statement-level trigger function, which now empties this table instead.
- Downgrading keeps the message events as the history again and drops the rest.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from tracker.store.tables import BigId, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
_CARRY_OVER = """
INSERT INTO async_status_event (job_id, event_id, occurred_at, seq, type, message, received_at)
SELECT h.job_id, h.event_id, h.occurred_at, h.seq,
       CASE WHEN h.event_id = a.terminal_event_id THEN lower(a.status) ELSE 'progress' END,
       h.message, NULL
FROM async_status_message AS h JOIN async_status AS a ON a.id = h.job_id
"""

_CARRY_BACK = """
INSERT INTO async_status_message (job_id, event_id, occurred_at, seq, message)
SELECT job_id, event_id, occurred_at, seq, message FROM async_status_event WHERE message IS NOT NULL
"""

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

# Migration 0004's function, as it was.
_FORGET_0004 = """
CREATE OR REPLACE FUNCTION tracker_forget_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- Already empty when truncated in the same statement (truncating again would be refused).
        IF EXISTS (SELECT FROM async_status_message) THEN
            TRUNCATE async_status_message;
        END IF;
        IF EXISTS (SELECT FROM async_status_lease) THEN
            TRUNCATE async_status_lease;
        END IF;
        IF EXISTS (SELECT FROM async_status_lost) THEN
            TRUNCATE async_status_lost;
        END IF;
    ELSE
        DELETE FROM async_status_message WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
        DELETE FROM async_status_lease WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
        DELETE FROM async_status_lost WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
    END IF;
    RETURN NULL;
END
$$
"""


def _job_id(postgresql: bool) -> sa.Column[int]:
    if postgresql:
        return sa.Column("job_id", BigId, primary_key=True)
    return sa.Column("job_id", BigId, sa.ForeignKey("async_status.id", ondelete="CASCADE"), primary_key=True)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "async_status_event",
        _job_id(postgresql),
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("received_at", UTCDateTime),
    )
    op.execute(_CARRY_OVER)
    if postgresql:
        op.execute(_FORGET_0005)
    op.drop_table("async_status_message")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "async_status_message",
        _job_id(postgresql),
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.execute(_CARRY_BACK)
    if postgresql:
        op.execute(_FORGET_0004)
    op.drop_table("async_status_event")
