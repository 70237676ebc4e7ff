"""The change log's deletions (SPEC §13), indexed by cursor.

Every read of a stream asks whether a row was deleted after its cursor (an entry of
``async_status_change`` without a job; ``tracker.store.cursor``). Through the log's primary key
that reads every entry after the cursor; and the log is only ever appended to, so its statistics
are often missing or old, and PostgreSQL then chose to read the whole log instead (in the
benchmark's #2c, a scan of every entry at every notification, growing with the log). This index
holds the deletions alone, a handful: the check reads it whatever the statistics say. The log's
inserts of changed rows (every fold) add nothing to it.

Not built CONCURRENTLY (the migrations run in one transaction): building it reads the log once,
at most ``KEPT_ENTRIES`` (about a million) entries, and holds off the log's writers meanwhile
(well under a second here).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
_NAME = "ix_async_status_change_deletions"
_DELETIONS = "job_id IS NULL"


def upgrade() -> None:
    op.create_index(
        _NAME,
        "async_status_change",
        ["seq"],
        postgresql_where=sa.text(_DELETIONS),
        sqlite_where=sa.text(_DELETIONS),
    )


def downgrade() -> None:
    op.drop_index(_NAME, "async_status_change")
