"""The PENDING jobs whose cancellation was asked (SPEC §12), indexed by when it was asked.

Two readers look for them every reap interval: the repeat of cancel messages
(``tracker.store.cancels.CancelRequests.pending_notices``, oldest requests first, ties by id) and
the grace of the lost-job check (``tracker.store.leases``: requests older than the grace). Without
an index both read every PENDING row. This one holds only PENDING rows with a request, few at any
moment: a job enters it when its cancellation is asked and leaves it when it ends. The updates of
other jobs (every progress event) add nothing to it, and since ``status`` is already in the table's
indexes and ``cancel_requested_at`` is written only by a request, they stay HOT as before.

Not built CONCURRENTLY, as 0006's indexes were not: the migrations run in one transaction. Building
it reads the table once and holds off writes meanwhile (seconds for millions of rows); it is small.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
_NAME = "ix_async_status_pending_cancel_requested"
_ASKED = "status = 'PENDING' AND cancel_requested_at IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        _NAME,
        "async_status",
        ["cancel_requested_at", "id"],
        postgresql_where=sa.text(_ASKED),
        sqlite_where=sa.text(_ASKED),
    )


def downgrade() -> None:
    op.drop_index(_NAME, "async_status")
