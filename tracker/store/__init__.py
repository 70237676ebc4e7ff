"""The database behind one interface: tables, engines, the job store per dialect, migrations.

``open_job_store(make_engine(url))`` is the usual start; ``migrate(engine)`` brings a database to
the newest schema. Nothing here opens a connection at import time.
"""

from sqlalchemy.engine import Engine

from tracker.errors import JobNotFound, StoreRefused, StoreUnavailable
from tracker.store.engine import make_engine, refused_as_error, unavailable_as_error
from tracker.store.jobs import JobStore
from tracker.store.migrations import migrate, schema_problem
from tracker.store.postgresql import PostgresJobStore
from tracker.store.sqlite import SQLiteJobStore

__all__ = [
    "JobNotFound",
    "JobStore",
    "StoreRefused",
    "StoreUnavailable",
    "make_engine",
    "migrate",
    "open_job_store",
    "refused_as_error",
    "schema_problem",
    "unavailable_as_error",
]


def open_job_store(engine: Engine, *, record_receipts: bool = True, keep_timeline: bool = True) -> JobStore:
    """The JobStore for ``engine``'s dialect (PostgreSQL or SQLite); opens no connection.

    ``record_receipts=False`` and ``keep_timeline=False`` are for the benchmark's A/Bs of ingest
    with and without lease renewal, and with and without the timeline. Raises ValueError for any
    other database.
    """
    if engine.dialect.name == "postgresql":
        return PostgresJobStore(engine, record_receipts=record_receipts, keep_timeline=keep_timeline)
    if engine.dialect.name == "sqlite":
        return SQLiteJobStore(engine, record_receipts=record_receipts, keep_timeline=keep_timeline)
    raise ValueError(f"unsupported database {engine.dialect.name!r}: use PostgreSQL or SQLite")
