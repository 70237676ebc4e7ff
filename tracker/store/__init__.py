"""The database behind one interface: tables, engines, the job store per dialect, migrations.

``open_job_store(make_engine(url))`` is the usual start; ``migrate(engine)`` brings a database to
the newest schema. Nothing here opens a connection at import time.
"""

from tracker.errors import JobNotFound, StoreRefused, StoreUnavailable
from tracker.store.engine import make_engine, refused_as_error, unavailable_as_error
from tracker.store.jobs import JobStore, open_job_store
from tracker.store.migrations import migrate, schema_problem

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
