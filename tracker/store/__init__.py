"""The database behind one interface: tables, engines, the job store per dialect, migrations.

``open_job_store(make_engine(url))`` is the usual start; ``migrate(engine)`` brings a database to
the newest schema. Nothing here opens a connection at import time.
"""

from sqlalchemy.engine import Engine

from tracker.errors import JobNotFound, StoreBroken, StoreRefused, StoreUnavailable
from tracker.store.engine import make_engine, refused_as_error, unavailable_as_error
from tracker.store.jobs import JobStore
from tracker.store.migrations import migrate, schema_problem
from tracker.store.postgresql import PostgresJobStore
from tracker.store.sqlite import SQLiteJobStore

__all__ = [
    "JobNotFound",
    "JobStore",
    "StoreBroken",
    "StoreRefused",
    "StoreUnavailable",
    "make_engine",
    "migrate",
    "open_job_store",
    "refused_as_error",
    "schema_problem",
    "unavailable_as_error",
]


def open_job_store(engine: Engine) -> JobStore:
    """The JobStore for ``engine``'s dialect (PostgreSQL or SQLite); opens no connection.

    Raises ValueError for any other database.
    """
    if engine.dialect.name == "postgresql":
        return PostgresJobStore(engine)
    if engine.dialect.name == "sqlite":
        return SQLiteJobStore(engine)
    raise ValueError(f"unsupported database {engine.dialect.name!r}: use PostgreSQL or SQLite")
