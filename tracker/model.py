"""The job as the tracker's parts hand it to each other: its row, its timeline, a page of the list, a fold's outcome.

Plain values, no I/O: the store makes them, the API renders them, the consumer counts them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from tracker import listing, merge
from tracker.labels import Labels


@dataclasses.dataclass(frozen=True)
class Job:
    """The public row, as GET returns it: Traffic Ops' five fields, then SPEC §11's and §13's, which
    a job that uses none of them leaves at their defaults (and the API then leaves out).

    Hashable (the API keys caches of rendered rows by it): labels are sorted pairs, and the result
    and the error's details their compact JSON text (``tracker.events.json_text``).
    """

    id: int
    status: str
    start_time: dt.datetime
    end_time: dt.datetime | None
    message: str | None
    kind: str | None = None
    labels: Labels = ()
    progress: float | None = None
    result_json: str | None = None
    error_code: str | None = None
    error_details_json: str | None = None
    cancel_requested_at: dt.datetime | None = None
    # SPEC §13: the webhook given at creation, and how its delivery goes (tracker.webhooks' states;
    # attempts started so far)
    notify_url: str | None = None
    notify_state: str | None = None
    notify_attempts: int | None = None


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
    progress: float | None = None
    result_json: str | None = None
    error_code: str | None = None
    error_details_json: str | None = None

    @property
    def key(self) -> merge.Key:
        return merge.Key(self.occurred_at, self.seq, self.event_id)


@dataclasses.dataclass(frozen=True)
class JobPage:
    """One page of the job list, and how many rows match its filters regardless of paging."""

    jobs: list[Job]
    count: listing.Count


@dataclasses.dataclass(frozen=True)
class Ended:
    """A job a batch ended: PENDING before it, SUCCEEDED or FAILED after (for the duration metric)."""

    job_id: int
    kind: str | None
    status: str
    start_time: dt.datetime
    end_time: dt.datetime

    @property
    def duration_s(self) -> float:
        return (self.end_time - self.start_time).total_seconds()


@dataclasses.dataclass(frozen=True)
class Applied:
    """What a batch did: rows changed, the job ids that have no row (their events not applied),
    the jobs it ended, in job id order, and those of them with a webhook, whose delivery it queued
    (SPEC §13), in job id order too.

    A job ends once: a batch that moves an ended job's end earlier (a late earlier terminal event)
    changes its row but does not end it again.
    """

    changed_jobs: int
    missing_jobs: frozenset[int]
    ended: tuple[Ended, ...] = ()
    queued_deliveries: tuple[int, ...] = ()
