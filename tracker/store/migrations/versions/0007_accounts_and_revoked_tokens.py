"""Tokens tied to their account, and ended by a logout (issue 24): ``tracker_user.account_id`` and
``tracker_revoked_token``.

- ``tracker_user.account_id``: a random id (32 hex digits) per account, never changed. Tokens
  carry it (claim ``acct``) and the API compares it with the user's on every request, so that an
  account deleted and made again under the same name does not take the first one's tokens, not
  even within the same second (a token's ``iat`` holds whole seconds). Existing users get one
  each here; tokens issued before have no ``acct`` and are refused: everyone logs in once again.
- ``tracker_revoked_token``: the tokens (by ``jti``) a logout ended, until they would have
  expired (then deleted). ``seq`` numbers them in the order they commit (each revoking transaction
  locks the table first on PostgreSQL; SQLite's writers are serial), never reused (SQLite:
  AUTOINCREMENT), so that an API process reads only what is new since the last one it saw.
  Small: one row per logout within a token's lifetime. Every API process keeps them in memory.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import secrets

import sqlalchemy as sa
from alembic import op

from tracker.store.tables import BigId, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
_USERS = sa.table("tracker_user", sa.column("username", sa.String(128)), sa.column("account_id", sa.String(32)))


def upgrade() -> None:
    op.add_column("tracker_user", sa.Column("account_id", sa.String(32)))
    connection = op.get_bind()
    for username in connection.execute(sa.select(_USERS.c.username)).scalars().all():
        connection.execute(
            sa.update(_USERS).where(_USERS.c.username == username).values(account_id=secrets.token_hex(16))
        )
    with op.batch_alter_table("tracker_user") as batch:
        batch.alter_column("account_id", existing_type=sa.String(32), nullable=False)
    op.create_table(
        "tracker_revoked_token",
        sa.Column("seq", BigId, sa.Identity(always=False), primary_key=True),
        sa.Column("token_id", sa.String(64), nullable=False, unique=True),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tracker_revoked_token_expires_at", "tracker_revoked_token", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_tracker_revoked_token_expires_at", "tracker_revoked_token")
    op.drop_table("tracker_revoked_token")
    with op.batch_alter_table("tracker_user") as batch:
        batch.drop_column("account_id")
