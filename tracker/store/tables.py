"""The tables, as SQLAlchemy Core sees them (the migrations in ``migrations/`` make them)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from tracker import timefmt
from tracker.labels import Labels, as_labels

metadata = sa.MetaData()


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """An aware UTC instant in, an aware UTC instant out, on every backend.

    PostgreSQL keeps it as timestamptz; SQLite keeps the naive UTC text, since it has no zones.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware instant")
        utc = value.astimezone(timefmt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timefmt.UTC)
        return value.astimezone(timefmt.UTC)


class LabelsType(sa.types.TypeDecorator[Labels]):
    """A job's labels (``tracker.labels.Labels``, sorted pairs) in, the same out; stored as a JSON
    object (JSONB on PostgreSQL, so that a later index can look into it), SQL NULL for none."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[object]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB(none_as_null=True))
        return dialect.type_descriptor(sa.JSON(none_as_null=True))

    def process_bind_param(self, value: Labels | None, dialect: sa.Dialect) -> dict[str, str] | None:
        return dict(value) if value else None

    def process_result_value(self, value: dict[str, str] | None, dialect: sa.Dialect) -> Labels:
        return as_labels(value)


# A JSON value kept as the compact text it came as (tracker.events.json_text): PostgreSQL's json
# keeps the text exactly, as SQLite's text does. Read it as text (``sa.cast(column, sa.Text)``),
# so that no reader parses it: the API writes it into its answers as it is.
JsonText = sa.Text().with_variant(postgresql.JSON(), "postgresql")

# SQLite only autoincrements (and never reuses ids) for an INTEGER PRIMARY KEY column.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

async_status = sa.Table(
    "async_status",
    metadata,
    # Traffic Ops' columns
    sa.Column("id", BigId, sa.Identity(always=False), primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("start_time", UTCDateTime, nullable=False, server_default=sa.func.now()),
    sa.Column("end_time", UTCDateTime),
    # what the merge keeps (tracker.merge.JobState)
    sa.Column("initial_message", sa.Text),
    sa.Column("terminal_at", UTCDateTime),
    sa.Column("terminal_seq", sa.BigInteger),
    sa.Column("terminal_event_id", sa.String(36)),
    sa.Column("message_at", UTCDateTime),
    sa.Column("message_seq", sa.BigInteger),
    sa.Column("message_event_id", sa.String(36)),
    # SPEC §6 (migration 0004): start_time + timeout_s; NULL for rows made before, whose deadline
    # is start_time + TRACKER_JOB_TIMEOUT_S
    sa.Column("deadline_at", UTCDateTime),
    # SPEC §11 (migration 0008), NULL when not given or not set. Given at creation, fixed:
    sa.Column("kind", sa.Text),
    sa.Column("labels", LabelsType),
    # the merge's: progress and its event's key (as message and message_*); t's result and error
    # (written with terminal_*); the earliest cancel_requested event in R, by its key
    sa.Column("progress", sa.Double),
    sa.Column("progress_at", UTCDateTime),
    sa.Column("progress_seq", sa.BigInteger),
    sa.Column("progress_event_id", sa.String(36)),
    sa.Column("result", JsonText),
    sa.Column("error_code", sa.Text),
    sa.Column("error_details", JsonText),
    sa.Column("cancel_requested_at", UTCDateTime),
    sa.Column("cancel_seq", sa.BigInteger),
    sa.Column("cancel_event_id", sa.String(36)),
    # SPEC §13 (migration 0012), NULL for a job without a webhook: its notify_url, given at creation;
    # its delivery's state (tracker.webhooks: pending, delivered, failed) and attempts started
    sa.Column("notify_url", sa.Text),
    sa.Column("notify_state", sa.Text),
    sa.Column("notify_attempts", sa.Integer),
    sqlite_autoincrement=True,
)
# The columns a client sees (Traffic Ops' own, then SPEC §11's and §13's), in the order of ``tracker.model.Job``.
PUBLIC_COLUMNS = (
    async_status.c.id,
    async_status.c.status,
    async_status.c.start_time,
    async_status.c.end_time,
    async_status.c.message,
    async_status.c.kind,
    async_status.c.labels,
    async_status.c.progress,
    sa.cast(async_status.c.result, sa.Text).label("result"),
    async_status.c.error_code,
    sa.cast(async_status.c.error_details, sa.Text).label("error_details"),
    async_status.c.cancel_requested_at,
    async_status.c.notify_url,
    async_status.c.notify_state,
    async_status.c.notify_attempts,
)
# The lost-job check reads PENDING rows only, by these (partial, so small: finished rows leave them).
sa.Index(
    "ix_async_status_pending_deadline",
    async_status.c.deadline_at,
    sqlite_where=sa.text("status = 'PENDING'"),
    postgresql_where=sa.text("status = 'PENDING'"),
)
sa.Index(
    "ix_async_status_pending_undated",
    async_status.c.start_time,
    sqlite_where=sa.text("status = 'PENDING' AND deadline_at IS NULL"),
    postgresql_where=sa.text("status = 'PENDING' AND deadline_at IS NULL"),
)
sa.Index(
    "ix_async_status_finished_end_time",
    async_status.c.end_time,
    sqlite_where=sa.text("status <> 'PENDING'"),
    postgresql_where=sa.text("status <> 'PENDING'"),
)
# The PENDING jobs whose cancellation was asked (migration 0014), for the repeat of cancel messages
# and the grace; partial, so that jobs without a request, and finished ones, leave it alone.
sa.Index(
    "ix_async_status_pending_cancel_requested",
    async_status.c.cancel_requested_at,
    async_status.c.id,
    sqlite_where=sa.text("status = 'PENDING' AND cancel_requested_at IS NOT NULL"),
    postgresql_where=sa.text("status = 'PENDING' AND cancel_requested_at IS NOT NULL"),
)
# The job list (migration 0006): finished jobs by status in each order it can be asked for, ties
# by id; partial, so that the updates of running jobs leave them alone.
sa.Index(
    "ix_async_status_finished_by_id",
    async_status.c.status,
    async_status.c.id,
    sqlite_where=sa.text("status <> 'PENDING'"),
    postgresql_where=sa.text("status <> 'PENDING'"),
)
sa.Index(
    "ix_async_status_finished_by_start_time",
    async_status.c.status,
    async_status.c.start_time,
    async_status.c.id,
    sqlite_where=sa.text("status <> 'PENDING'"),
    postgresql_where=sa.text("status <> 'PENDING'"),
)
sa.Index(
    "ix_async_status_finished_by_end_time",
    async_status.c.status,
    async_status.c.end_time,
    async_status.c.id,
    sqlite_where=sa.text("status <> 'PENDING'"),
    postgresql_where=sa.text("status <> 'PENDING'"),
)
# The list's filters and its newest running jobs (migration 0013): every column they hold or are
# conditioned on is one a progress update leaves as it is, so those updates can stay HOT.
sa.Index(
    "ix_async_status_pending_by_id",
    async_status.c.id,
    sqlite_where=sa.text("status = 'PENDING'"),
    postgresql_where=sa.text("status = 'PENDING'"),
)
sa.Index(
    "ix_async_status_kind",
    async_status.c.kind,
    async_status.c.status,
    async_status.c.id,
    sqlite_where=sa.text("kind IS NOT NULL"),
    postgresql_where=sa.text("kind IS NOT NULL"),
)
sa.Index(
    "ix_async_status_error_code",
    async_status.c.error_code,
    async_status.c.id,
    sqlite_where=sa.text("error_code IS NOT NULL"),
    postgresql_where=sa.text("error_code IS NOT NULL"),
)

# Heartbeat leases: a row only for a PENDING job that has one, made with the job, renewed by the
# fold of each batch holding an event of it (so the jobs' own rows, watched by the API's row
# cache, are not written for a heartbeat), deleted by the fold that finishes the job.
async_status_lease = sa.Table(
    "async_status_lease",
    metadata,
    sa.Column("job_id", BigId, sa.ForeignKey("async_status.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("heartbeat_timeout_s", sa.Integer, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

# The lost-job check's decisions whose failed event may not have been folded yet: written before
# the event is published, so that a check after a crash publishes the same event again, never
# another. Deleted once their job is no longer PENDING.
async_status_lost = sa.Table(
    "async_status_lost",
    metadata,
    sa.Column("job_id", BigId, sa.ForeignKey("async_status.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("limit_s", sa.Integer, nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
)

# Every accepted event of a job once (SPEC §7, the timeline; migration 0005): what GET
# /api/{v}/async_status/{id}/events answers, and the history the merge reads in its one case that
# needs more than the row (the latest message event at or before a new earliest terminal event).
# ``received_at``: when the tracker folded it (the fold's transaction); NULL for the events carried
# over from the message history of before 0005, whose receipt was not recorded. The foreign key is
# SQLite's; on PostgreSQL a statement-level trigger deletes a job's events with it (0003, 0005).
async_status_event = sa.Table(
    "async_status_event",
    metadata,
    sa.Column("job_id", BigId, sa.ForeignKey("async_status.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("event_id", sa.String(36), primary_key=True),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("received_at", UTCDateTime),
    # SPEC §11 (migration 0008), NULL when the event carries none
    sa.Column("progress", sa.Double),
    sa.Column("result", JsonText),
    sa.Column("error_code", sa.Text),
    sa.Column("error_details", JsonText),
)

# Webhook deliveries to be made (SPEC §13; migration 0012): a row for each ended job with a notify_url
# whose delivery has not succeeded nor been given up, inserted by the fold in the transaction that
# ends the job (``queued_at``, from which the retries' 24 h count), deleted by the attempt that
# settles it. ``due_at``: when a deliverer may take it next, the first time at once; while an attempt
# is in flight, when that attempt's ``claim`` lapses (a deliverer killed mid-attempt: the next one
# takes it over then). The foreign key is SQLite's; on PostgreSQL the trigger function of 0003
# deletes a job's delivery with it, as it deletes its events.
async_status_delivery = sa.Table(
    "async_status_delivery",
    metadata,
    sa.Column("job_id", BigId, sa.ForeignKey("async_status.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("queued_at", UTCDateTime, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("claim", sa.String(36)),
)
sa.Index("ix_async_status_delivery_due", async_status_delivery.c.due_at)

# The stream's change log (SPEC §13; migration 0015): an entry for each row of async_status written,
# appended by triggers in commit order (tracker.store.cursor); ``job_id`` NULL: rows were deleted.
async_status_change = sa.Table(
    "async_status_change",
    metadata,
    sa.Column("seq", BigId, sa.Identity(always=False), primary_key=True),
    sa.Column("job_id", BigId),
    sqlite_autoincrement=True,
)

# The log's deletions (migration 0016): a stream's every read asks whether there is one after its
# cursor; partial, so that the log's other entries leave it alone.
sa.Index(
    "ix_async_status_change_deletions",
    async_status_change.c.seq,
    sqlite_where=sa.text("job_id IS NULL"),
    postgresql_where=sa.text("job_id IS NULL"),
)

# The stream's one row (migration 0015): the highest cursor pruned from the log; a cursor below it
# cannot be resumed.
async_status_stream = sa.Table(
    "async_status_stream",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("pruned_upto", sa.BigInteger, nullable=False),
)

users = sa.Table(
    "tracker_user",
    metadata,
    sa.Column("username", sa.String(128), primary_key=True),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # A random id of the account, never changed (migration 0007): tokens carry it, so that an
    # account deleted and made again under the same name does not take the first one's tokens.
    sa.Column("account_id", sa.String(32), nullable=False),
)

# Tokens ended before their expiry by a logout (migration 0007): every API process keeps those not
# yet expired in memory (api/revocations.py). ``seq`` follows the order revocations commit in (on
# PostgreSQL each revoking transaction locks the table first), so that a process can read what is
# new since the last it saw; never reused, since expired rows are deleted.
revoked_tokens = sa.Table(
    "tracker_revoked_token",
    metadata,
    sa.Column("seq", BigId, sa.Identity(always=False), primary_key=True),
    sa.Column("token_id", sa.String(64), nullable=False, unique=True),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
    sqlite_autoincrement=True,
)

login_failures = sa.Table(
    "tracker_login_failure",
    metadata,
    sa.Column("subject", sa.String(200), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("first_at", UTCDateTime, nullable=False),
    sa.Column("locked_until", UTCDateTime),
)
