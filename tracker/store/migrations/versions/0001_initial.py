"""The async_status table, the merge's message history, users and login throttling.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from tracker.store.tables import BigId, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "async_status",
        sa.Column("id", BigId, sa.Identity(always=False), primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("start_time", UTCDateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("end_time", UTCDateTime),
        sa.Column("initial_message", sa.Text),
        sa.Column("terminal_at", UTCDateTime),
        sa.Column("terminal_seq", sa.BigInteger),
        sa.Column("terminal_event_id", sa.String(36)),
        sa.Column("message_at", UTCDateTime),
        sa.Column("message_seq", sa.BigInteger),
        sa.Column("message_event_id", sa.String(36)),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "async_status_message",
        sa.Column("job_id", BigId, sa.ForeignKey("async_status.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_table(
        "tracker_user",
        sa.Column("username", sa.String(128), primary_key=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "tracker_login_failure",
        sa.Column("subject", sa.String(200), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("first_at", UTCDateTime, nullable=False),
        sa.Column("locked_until", UTCDateTime),
    )


def downgrade() -> None:
    op.drop_table("tracker_login_failure")
    op.drop_table("tracker_user")
    op.drop_table("async_status_message")
    op.drop_table("async_status")
