"""Indexes for the list's filters (SPEC §11) and for the newest running jobs, built without holding off writes.

- ``ix_async_status_pending_by_id`` ``(id) WHERE status = 'PENDING'``: the newest (or oldest)
  running jobs as an index range, instead of reading and sorting every running job.
- ``ix_async_status_kind`` ``(kind, status, id) WHERE kind IS NOT NULL``: ``kind=K``, alone or
  with ``status``, per status one range in id order.
- ``ix_async_status_error_code`` ``(error_code, id) WHERE error_code IS NOT NULL``: ``errorCode``
  (FAILED jobs only carry one).

No index of the labels: ``label`` is found by walking the newest jobs of each status (a common
label is met at once). A GIN index of the JSONB was tried: the planner then counted a common
label of a rare status (``env=prod`` among FAILED jobs) by a bitmap of every job holding the
label, 90 ms on 1,000,000 rows, instead of a walk of a few thousand (docs/performance.md).

Every column they hold or are conditioned on (id, status, kind, error_code) is one a
progress update leaves as it is, so such updates stay HOT (no index entry) whenever the row's
page has room; the table's fillfactor is set to 85 so that it more often has
(docs/performance.md, "The list's filters", has the A/B of ingest with and without them).

PostgreSQL: each index is built with ``CREATE INDEX CONCURRENTLY`` in alembic's autocommit
block, which takes a lock that lets writes go on (SHARE UPDATE EXCLUSIVE) and reads the table
twice; so the revisions before this one are committed first, as alembic's block does. A failed
build leaves an invalid index behind, dropped and built again by the next attempt. Handed a
connection in a transaction of its caller's (tests), it builds them in that transaction, holding
off writes meanwhile, as 0006 did. ``ALTER TABLE … SET (fillfactor)`` takes the same lock and
rewrites nothing: it applies to the pages filled from then on. On 5,000,000 rows the upgrade
took 24.6 s on a busy 2-core machine, while a writer's one-row updates went on (5,501 of them,
the slowest 137 ms against a median of 0.9 ms before): ``python -m bench.migration_hold --to
0013``, docs/performance.md.

SQLite: the same indexes, as plain ``CREATE INDEX`` (its writers wait on a lock of the whole
database anyway).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration states what it did, whatever the code says later.
_BTREES = {
    "ix_async_status_pending_by_id": ("(id)", "status = 'PENDING'"),
    "ix_async_status_kind": ("(kind, status, id)", "kind IS NOT NULL"),
    "ix_async_status_error_code": ("(error_code, id)", "error_code IS NOT NULL"),
}
_FILLFACTOR = 85


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for name, (columns, where) in _BTREES.items():
            op.execute(f"CREATE INDEX {name} ON async_status {columns} WHERE {where}")
        return
    shapes = {name: f"{columns} WHERE {where}" for name, (columns, where) in _BTREES.items()}
    context = op.get_context()
    # alembic's block commits the transaction it began; it cannot commit one its caller holds.
    if getattr(context, "_in_external_transaction", False):
        for name, shape in shapes.items():
            op.execute(f"CREATE INDEX {name} ON async_status {shape}")
        op.execute(f"ALTER TABLE async_status SET (fillfactor = {_FILLFACTOR})")
        return
    with context.autocommit_block():
        for name, shape in shapes.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")  # an invalid one, from a failed build
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON async_status {shape}")
        op.execute(f"ALTER TABLE async_status SET (fillfactor = {_FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE async_status RESET (fillfactor)")
    for name in reversed(_BTREES):
        op.execute(f"DROP INDEX {name}")
