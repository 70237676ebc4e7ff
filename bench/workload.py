"""The events a run publishes: job lifecycles as workers report them, as message bodies."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import uuid
from collections.abc import Sequence

import orjson

from tracker import timefmt

EVENTS_PER_JOB = 5  # as the measurements publish them: four progress reports, then succeeded or failed


@dataclasses.dataclass(frozen=True)
class Workload:
    bodies: list[bytes]
    final_jobs: list[int]  # the jobs of the last round, in the order their final events come


def lifecycles(
    job_ids: Sequence[int], per_job: int, rng: random.Random, *, heartbeats: bool = False, details: bool = False
) -> Workload:
    """Each job's life as ``per_job`` events: progress with a message, then succeeded or failed.

    Jobs are interleaved round by round, in a new order each round, as many workers running at
    once would report them; every event carries a message, so each is also one the merge may need
    again. With ``heartbeats``, the progress events carry none (plain heartbeats, SPEC §6): only
    the timeline keeps them. With ``details`` (SPEC §11), every progress event carries a
    ``progress`` too, and every succeeded event a ``result`` (``result_of``); the same random
    choices are made either way, so the two workloads differ by these fields alone.
    """
    base = timefmt.now()
    order = list(job_ids)
    bodies = []
    for step in range(per_job):
        rng.shuffle(order)
        final = step == per_job - 1
        for job_id in order:
            kind = rng.choice(("succeeded", "failed")) if final else "progress"
            at = base + dt.timedelta(milliseconds=step, microseconds=rng.randrange(1000))
            message = None if heartbeats and not final else f"step {step + 1} of {per_job}"
            extra: dict[str, object] = {}
            if details and kind == "progress":
                extra["progress"] = round(100 * (step + 1) / per_job, 1)
            elif details and kind == "succeeded":
                extra["result"] = result_of(job_id)
            bodies.append(event_body(job_id, kind, message, at, seq=step, **extra))
    return Workload(bodies, order)


def result_of(job_id: int) -> dict[str, object]:
    """A small result, as a job would report what it produced: counts, a place, a checksum."""
    return {
        "rows": 1000 + job_id % 997,
        "bytes": 48_213 * (job_id % 89 + 1),
        "file": f"s3://exports/2026/12/job-{job_id}.csv.gz",
        "sha256": f"{job_id:064x}",
        "partial": False,
    }


def event_body(job_id: int, kind: str, message: str | None, at: dt.datetime, seq: int = 0, **extra: object) -> bytes:
    """One valid event as a worker's publisher would send it, with ``extra`` fields beside."""
    return orjson.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "job_id": job_id,
            "type": kind,
            "occurred_at": timefmt.format_time(at),
            "message": message,
            "seq": seq,
            **extra,
        }
    )
