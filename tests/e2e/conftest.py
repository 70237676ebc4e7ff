"""What the end-to-end tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tracker.store import JobStore, make_engine, open_job_store


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    """The test's database as the tracker's store, beside the processes under test."""
    engine = make_engine(database_url)
    yield open_job_store(engine)
    engine.dispose()
