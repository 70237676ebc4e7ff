"""Tokens tied to their account (issue 24): ``tracker_user.account_id``.

- ``tracker_user.account_id``: a random id (32 hex digits) per account, never changed. Tokens
  carry it (claim ``acct``) and the API compares it with the user's on every request, so that an
  account deleted and made again under the same name does not take the first one's tokens, not
  even within the same second (a token's ``iat`` holds whole seconds). Existing users get one
  each here; tokens issued before have no ``acct`` and are refused: everyone logs in once again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import secrets

import sqlalchemy as sa
from alembic import op

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


def downgrade() -> None:
    with op.batch_alter_table("tracker_user") as batch:
        batch.drop_column("account_id")
