"""Leases (SPEC §6) as pure decisions: the settings a job may have, when it is lost, what fails it.

No I/O here. The store finds the candidates (``tracker.store.leases``), the consumer's reaper
thread publishes what ``failed_event`` gives (``consumers.reaper``); both follow what this says.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from tracker.events import Event

MAX_TIMEOUT_S = 30 * 24 * 3600  # 2,592,000: 30 days, for both settings
DEFAULT_JOB_TIMEOUT_S = 24 * 3600
DEFAULT_HEARTBEAT_TIMEOUT_S = 0  # none
# A lease whose recorded expiry is within this of what a receipt now would make it is not
# rewritten: a job whose events come in bursts then costs one write, not one a batch. The
# recorded expiry may so be up to this much early, so the check waits this much past it: a job
# is never failed early, and at most this late. merge.sql states the same interval.
RENEW_SLACK_S = 1

# ``cancelled``: the job's cancellation was asked for and its worker did not stop within the
# grace (SPEC §12); the tracker fails it as it fails a lost job.
Reason = Literal["heartbeat", "timeout", "cancelled"]
REASONS: tuple[Reason, ...] = ("heartbeat", "timeout", "cancelled")
# The error.code of the tracker's failed event for each (SPEC §11): what a machine, the list's
# errorCode filter and the dashboard's lost-job count go by.
ERROR_CODES: dict[Reason, str] = {"heartbeat": "lost", "timeout": "timeout", "cancelled": "cancelled"}

# Fixed for ever: the id of the tracker's failed event is uuid5 of this, the job and the reason,
# so deciding twice (two consumers, or a check after a crash) publishes the very same event.
EVENT_NAMESPACE = uuid.UUID("6c1f3e0a-7b7e-4f57-9a8e-5d0c2a7f4b11")


def check_timeout(field: str, value: Any) -> int:
    """``value`` as a job's ``timeout_s`` or ``heartbeat_timeout_s``: an integer from 1 to 2592000.

    A JSON number with no fraction (``60.0``) is the integer it names, as JSON Schema (and so the
    OpenAPI document) says; booleans, fractions and text are refused. Raises ValueError naming
    ``field``, e.g. ``timeout_s must be an integer from 1 to 2592000``.
    """
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or not 1 <= value <= MAX_TIMEOUT_S:
        raise ValueError(f"{field} must be an integer from 1 to {MAX_TIMEOUT_S}")
    return value


@dataclasses.dataclass(frozen=True)
class JobLimits:
    """What a job is created with: its deadline, and its heartbeat lease (None: no lease)."""

    timeout_s: int
    heartbeat_timeout_s: int | None

    def deadline(self, start_time: dt.datetime) -> dt.datetime:
        return start_time + dt.timedelta(seconds=self.timeout_s)

    def lease_expiry(self, received_at: dt.datetime) -> dt.datetime | None:
        """When the lease runs out if nothing is received after ``received_at``; None without a lease."""
        if self.heartbeat_timeout_s is None:
            return None
        return received_at + dt.timedelta(seconds=self.heartbeat_timeout_s)


def limits_for(
    timeout_s: int | None, heartbeat_timeout_s: int | None, default_timeout_s: int, default_heartbeat_timeout_s: int
) -> JobLimits:
    """A new job's limits: the values asked for, else the server's defaults (a default of 0: no lease)."""
    heartbeat = default_heartbeat_timeout_s if heartbeat_timeout_s is None else heartbeat_timeout_s
    return JobLimits(default_timeout_s if timeout_s is None else timeout_s, heartbeat or None)


@dataclasses.dataclass(frozen=True, order=True)
class Expired:
    """One way a PENDING job ran out, as the store found it: ``limit_s`` passed at ``expired_at``."""

    job_id: int
    reason: Reason
    limit_s: int
    expired_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class Lost:
    """The decision that a job is lost: why, by which of its settings, and when it was taken."""

    job_id: int
    reason: Reason
    limit_s: int
    decided_at: dt.datetime

    @property
    def message(self) -> str:
        if self.reason == "heartbeat":
            return f"no event for {self.limit_s} s: the worker is presumed lost"
        if self.reason == "cancelled":
            return f"cancelled: the worker did not stop within {self.limit_s} s"
        return f"not finished within {self.limit_s} s"

    @property
    def event_id(self) -> str:
        return str(uuid.uuid5(EVENT_NAMESPACE, f"{self.job_id}:{self.reason}"))

    @property
    def error_code(self) -> str:
        return ERROR_CODES[self.reason]

    def failed_event(self) -> Event:
        """The tracker's own ``failed`` event for this job (SPEC §6, §12), with ``error.code``
        ``lost``, ``timeout`` or ``cancelled`` (SPEC §11): the same for the same decision."""
        return Event(self.event_id, self.job_id, "failed", self.decided_at, self.message, 0, error_code=self.error_code)


_TIE_RANK: dict[Reason, int] = {"timeout": 0, "heartbeat": 1, "cancelled": 2}


def decide(expired: Iterable[Expired], decided_at: dt.datetime) -> list[Lost]:
    """One decision per job, in job id order, from the ways each ran out.

    A job that ran out several ways is failed by the one that ran out first (on a tie, its
    deadline first): the message then names the limit the worker really missed.
    """
    first: dict[int, Expired] = {}
    for item in expired:
        kept = first.get(item.job_id)
        if kept is None or (item.expired_at, _TIE_RANK[item.reason]) < (kept.expired_at, _TIE_RANK[kept.reason]):
            first[item.job_id] = item
    return [Lost(job_id, e.reason, e.limit_s, decided_at) for job_id, e in sorted(first.items())]


def caught_up(ready_messages: int) -> bool:
    """Whether a decision may be taken now: the events queue holds no ready message (SPEC §6)."""
    return ready_messages == 0


def purge_cutoff(now: dt.datetime, older_than_days: float) -> dt.datetime:
    """Finished jobs whose end_time is before this are purged. Raises ValueError for a negative age."""
    if not older_than_days >= 0:  # NaN too
        raise ValueError("the age of jobs to purge must be a number of days ≥ 0")
    return now - dt.timedelta(days=older_than_days)
