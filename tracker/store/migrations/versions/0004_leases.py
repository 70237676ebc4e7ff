"""Leases (SPEC §6): each job's deadline, heartbeat leases, the lost-job check's decisions.

- ``async_status.deadline_at``: nullable, without a default, so adding it rewrites no row (on
  PostgreSQL it is a change of the catalogue only). NULL, as every row made before has it, means
  start_time + TRACKER_JOB_TIMEOUT_S.
- Two partial indexes over PENDING rows only, which the lost-job check reads: by deadline, and by
  start time for the rows without one; finished rows are not in them, so they stay as small as
  the number of running jobs. One over finished rows by end_time, which retention reads oldest
  first. Building each reads the table once; no row is rewritten.
- ``async_status_lease`` (a row per PENDING job with a heartbeat lease) and ``async_status_lost``
  (decisions whose failed event may not be folded yet). Deleted with their job: on SQLite by
  foreign keys; on PostgreSQL, as migration 0003 does for the history, by its statement-level
  trigger function, which now empties these two tables as well (so ``TRUNCATE async_status``
  works as before).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from tracker.store.tables import BigId, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_PENDING = "status = 'PENDING'"
_UNDATED = "status = 'PENDING' AND deadline_at IS NULL"
_FINISHED = "status <> 'PENDING'"

# Written out rather than imported: a migration states what it did, whatever the code says later.
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

# Migration 0003's function, as it was.
_FORGET_0003 = """
CREATE OR REPLACE FUNCTION tracker_forget_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT FROM async_status_message) THEN
            TRUNCATE async_status_message;
        END IF;
    ELSE
        DELETE FROM async_status_message WHERE job_id IN (SELECT id FROM tracker_deleted_jobs);
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
    op.add_column("async_status", sa.Column("deadline_at", UTCDateTime))
    op.create_index(
        "ix_async_status_pending_deadline",
        "async_status",
        ["deadline_at"],
        postgresql_where=sa.text(_PENDING),
        sqlite_where=sa.text(_PENDING),
    )
    op.create_index(
        "ix_async_status_pending_undated",
        "async_status",
        ["start_time"],
        postgresql_where=sa.text(_UNDATED),
        sqlite_where=sa.text(_UNDATED),
    )
    op.create_index(
        "ix_async_status_finished_end_time",
        "async_status",
        ["end_time"],
        postgresql_where=sa.text(_FINISHED),
        sqlite_where=sa.text(_FINISHED),
    )
    op.create_table(
        "async_status_lease",
        _job_id(postgresql),
        sa.Column("heartbeat_timeout_s", sa.Integer, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    if postgresql:
        # No index on expires_at, and room on each page: every renewal by the fold is then a HOT
        # update (no index entry written). The table holds only running jobs with a lease.
        op.execute("ALTER TABLE async_status_lease SET (fillfactor = 50)")
    op.create_table(
        "async_status_lost",
        _job_id(postgresql),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("limit_s", sa.Integer, nullable=False),
        sa.Column("decided_at", UTCDateTime, nullable=False),
    )
    if postgresql:
        op.execute(_FORGET_0004)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FORGET_0003)
    op.drop_table("async_status_lost")
    op.drop_table("async_status_lease")
    op.drop_index("ix_async_status_finished_end_time", "async_status")
    op.drop_index("ix_async_status_pending_undated", "async_status")
    op.drop_index("ix_async_status_pending_deadline", "async_status")
    op.drop_column("async_status", "deadline_at")
