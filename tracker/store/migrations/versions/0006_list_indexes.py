"""The job list (SPEC §7): an index per order it can be asked for, each led by the status.

``GET /api/{version}/async_status`` reads each status it keeps as one range of one of these, in
the order asked (ties by id), and merges the ranges (``tracker.store.jobs``): the first page of
FAILED jobs, newest first, reads a hundred index entries whether the table holds a thousand rows
or millions. ``(status, id)`` also serves ``orderby=status``; counting a filter reads it too.

Building each reads the table once and holds off writes to it meanwhile (about 5 s for 5,000,000
rows here: docs/http-surface.md); no row is rewritten. On PostgreSQL a job's update that changes
none of these columns (a progress message) stays out of them.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
_INDEXES = {
    "ix_async_status_status_id": ["status", "id"],
    "ix_async_status_status_start_time": ["status", "start_time", "id"],
    "ix_async_status_status_end_time": ["status", "end_time", "id"],
}


def upgrade() -> None:
    for name, columns in _INDEXES.items():
        op.create_index(name, "async_status", columns)


def downgrade() -> None:
    for name in reversed(_INDEXES):
        op.drop_index(name, "async_status")
