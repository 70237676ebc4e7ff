"""What a job says about itself (SPEC §11): kind, labels, progress, result, error, cancel_requested_at.

- ``async_status`` gains ``kind`` (text) and ``labels`` (JSONB on PostgreSQL), given at creation;
  ``progress`` (double) with its event's key (``progress_at``, ``progress_seq``,
  ``progress_event_id``, as ``message_*`` for the message); *t*'s ``result`` and ``error_details``
  (json: the compact text as it came) and ``error_code`` (text, for the list's filter); and the
  earliest ``cancel_requested`` event in *R* (``cancel_requested_at``, ``cancel_seq``,
  ``cancel_event_id``).
- ``async_status_event`` (the timeline) gains ``progress``, ``result``, ``error_code`` and
  ``error_details``: what each event carried, and the history the merge reads the progress from.
- Every column is nullable, without a default: on PostgreSQL adding one changes the catalogue and
  rewrites no row, so rows from before read as NULL (no kind, no labels, none of the rest), which
  is what they are. Each ALTER still takes the table's ACCESS EXCLUSIVE lock, for as long as the
  catalogue change takes, but it must wait for the transactions already using the table (and
  holds off the others queued behind it meanwhile). Measured on a table of 5,000,000 rows (and
  as many timeline rows) while a writer updated one row at a time beside it: the whole upgrade
  took 24 ms, alembic included, and the slowest write meanwhile 7.9 ms, against 0.7 ms before;
  on a busier machine 130 ms and 42.5 ms (``python -m bench.migration_hold``;
  docs/performance.md). No index is added, and the table's fillfactor is left as it is
  (docs/http-surface.md says why).
- SQLite: ``ALTER TABLE … ADD COLUMN`` each, as quick.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from tracker.store.tables import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
_JSON = sa.Text().with_variant(postgresql.JSON(), "postgresql")


def _job_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("kind", sa.Text),
        sa.Column("labels", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
        sa.Column("progress", sa.Double),
        sa.Column("progress_at", UTCDateTime),
        sa.Column("progress_seq", sa.BigInteger),
        sa.Column("progress_event_id", sa.String(36)),
        sa.Column("result", _JSON),
        sa.Column("error_code", sa.Text),
        sa.Column("error_details", _JSON),
        sa.Column("cancel_requested_at", UTCDateTime),
        sa.Column("cancel_seq", sa.BigInteger),
        sa.Column("cancel_event_id", sa.String(36)),
    ]


def _event_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("progress", sa.Double),
        sa.Column("result", _JSON),
        sa.Column("error_code", sa.Text),
        sa.Column("error_details", _JSON),
    ]


def upgrade() -> None:
    for column in _job_columns():
        op.add_column("async_status", column)
    for column in _event_columns():
        op.add_column("async_status_event", column)


def downgrade() -> None:
    for column in reversed(_event_columns()):
        op.drop_column("async_status_event", column.name)
    for column in reversed(_job_columns()):
        op.drop_column("async_status", column.name)
