"""The job as the tracker's parts hand it to each other: its row, its timeline, a page of the list, a fold's outcome.

Plain values, no I/O: the store makes them, the API renders them, the consumer counts them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from tracker import listing, merge


@dataclasses.dataclass(frozen=True)
class Job:
    """The public row, as GET returns it."""

    id: int
    status: str
    start_time: dt.datetime
    end_time: dt.datetime | None
    message: str | None


@dataclasses.dataclass(frozen=True)
class TimelineEvent:
    """One accepted event of a job as its timeline shows it (SPEC §7).

    ``received_at`` is when the tracker folded it; None for events kept before the timeline was
    (migration 0005), whose receipt was not recorded.
    """

    event_id: str
    type: str
    occurred_at: dt.datetime
    received_at: dt.datetime | None
    seq: int
    message: str | None

    @property
    def key(self) -> merge.Key:
        return merge.Key(self.occurred_at, self.seq, self.event_id)


@dataclasses.dataclass(frozen=True)
class JobPage:
    """One page of the job list, and how many rows match its filters regardless of paging."""

    jobs: list[Job]
    count: listing.Count


@dataclasses.dataclass(frozen=True)
class Applied:
    """What a batch did: rows changed, and the job ids that have no row (their events not applied)."""

    changed_jobs: int
    missing_jobs: frozenset[int]
