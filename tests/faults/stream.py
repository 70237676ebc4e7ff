"""The fault scenarios' common ground: a stream of events, the publisher's record, and the check.

A scenario plans a stream (duplicated and reordered on purpose), publishes it paced over a
while from threads that each own a Publisher, records every event whose ``publish()`` returned
(the broker confirmed it), does its damage meanwhile, and then checks every row against
``merge.replay`` of the record. The figures it reports:

- ``published``: sends (a duplicate counts again); ``confirmed``: distinct events confirmed;
- ``lost``: confirmed events the database shows no trace of although the merge rule says it
  must (a message inside R is kept in async_status_event, the timeline; the earliest terminal is the row's
  ``terminal_event_id``); events the rule hides (after the terminal, or without a message)
  leave no trace of their own and are covered by the row check instead;
- ``applied`` = confirmed - lost; ``wrong``: rows that differ from the replay of the record;
- ``dead``: messages in the dead-letter queue at the end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import os
import pathlib
import random
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import sqlalchemy as sa

from tests.faults.rabbitmq import ready_count, unacked_count
from tests.processes import ConsumerProcess
from tracker import events, merge, timefmt
from tracker.config import Settings
from tracker.publisher import Publisher, PublishFailed
from tracker.store import JobStore
from tracker.store.tables import async_status, async_status_event

REPORT_ENV = "TRACKER_FAULTS_REPORT"
_MAX_UNSURE = 8  # unconfirmed events per job tried in every combination by the check
STOP_WITHIN_S = 15.0  # how long a consumer may take to exit after SIGTERM


def report_path() -> pathlib.Path:
    """Where figures go: $TRACKER_FAULTS_REPORT, else a file in the system's temporary directory."""
    return pathlib.Path(os.environ.get(REPORT_ENV) or pathlib.Path(tempfile.gettempdir()) / "tracker-faults.jsonl")


def create_jobs(store: JobStore, count: int, rng: random.Random) -> list[int]:
    """``count`` new jobs; about one in four has a creation message of its own."""
    return [store.create_job(f"created {n}" if rng.random() < 0.25 else None).id for n in range(count)]


def plan_events(
    job_ids: Sequence[int], count: int, rng: random.Random, around: dt.datetime | None = None
) -> list[events.Event]:
    """``count`` distinct valid events over the jobs: mostly progress, about one in ten terminal,
    about one in twenty a ``cancel_requested`` (SPEC §12: folded, never ending the job).

    Times fall within a second around ``around`` (so end_time is sometimes the job's start_time),
    and one event in ten copies the time of an earlier event of its job, so seq and event_id
    ties are exercised too. About one in seven carries no message.
    """
    around = around or timefmt.now()
    times: dict[int, list[dt.datetime]] = defaultdict(list)
    planned = []
    for n in range(count):
        job_id = rng.choice(job_ids)
        kind = rng.choices(["progress", "succeeded", "failed", "cancel_requested"], weights=[17, 1, 1, 1])[0]
        if times[job_id] and rng.random() < 0.1:
            at = rng.choice(times[job_id])
        else:
            at = around + dt.timedelta(milliseconds=rng.randrange(-300, 700), microseconds=rng.randrange(1000))
        times[job_id].append(at)
        message = None if rng.random() < 0.15 else f"{kind} {n} of job {job_id}"
        planned.append(events.new_event(job_id, kind, message, seq=rng.randrange(3), occurred_at=at))
    return planned


def shuffle_with_duplicates(
    planned: Sequence[events.Event], rng: random.Random, duplicates: float = 0.1
) -> list[events.Event]:
    """The send order: every event once, a fraction again, all shuffled (so never in time order)."""
    stream = list(planned) + rng.sample(list(planned), int(len(planned) * duplicates))
    rng.shuffle(stream)
    return stream


class Record:
    """The publisher's own account of what the broker confirmed; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = 0
        self.confirmed_sends = 0  # a duplicate confirmed again counts again
        self.confirmed: dict[str, events.Event] = {}
        self.failed: dict[str, events.Event] = {}

    def sending(self) -> None:
        with self._lock:
            self.sent += 1

    def confirm(self, event: events.Event) -> None:
        with self._lock:
            self.confirmed_sends += 1
            self.confirmed[event.event_id] = event

    def fail(self, event: events.Event) -> None:
        with self._lock:
            self.failed[event.event_id] = event

    def by_job(self) -> tuple[dict[int, list[events.Event]], dict[int, list[events.Event]]]:
        """(confirmed, unsure) events per job; unsure ones failed every send, yet may have arrived."""
        with self._lock:
            confirmed, failed = dict(self.confirmed), dict(self.failed)
        sure: dict[int, list[events.Event]] = defaultdict(list)
        unsure: dict[int, list[events.Event]] = defaultdict(list)
        for event in confirmed.values():
            sure[event.job_id].append(event)
        for event_id, event in failed.items():
            if event_id not in confirmed:
                unsure[event.job_id].append(event)
        return sure, unsure


class PacedPublishing:
    """Publishes a stream from ``threads`` threads at an even pace over ``duration_s`` seconds.

    Each thread owns a Publisher; ``publish()`` reconnects and resends by itself, and an event is
    recorded as confirmed only once it returned.
    """

    def __init__(
        self,
        settings: Settings,
        stream: Sequence[events.Event],
        record: Record,
        *,
        duration_s: float,
        threads: int = 2,
        timeout_s: float = 180.0,
    ) -> None:
        self._settings = settings
        self._stream = stream
        self._record = record
        self._interval = duration_s / max(len(stream), 1)
        self._timeout_s = timeout_s
        self._next = itertools.count()
        self._started = 0.0
        self._threads = [threading.Thread(target=self._run, name=f"publisher-{n}", daemon=True) for n in range(threads)]
        self.errors: list[BaseException] = []

    def start(self) -> PacedPublishing:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    @property
    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert self.done, f"publishing not finished after {timeout} s"
        assert not self.errors, f"publisher thread failed: {self.errors[0]!r}"

    def _run(self) -> None:
        try:
            with Publisher(self._settings, timeout_s=self._timeout_s) as publisher:
                while (index := next(self._next)) < len(self._stream):  # each index to one thread
                    due = self._started + index * self._interval
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    event = self._stream[index]
                    self._record.sending()
                    try:
                        publisher.publish(event)
                    except PublishFailed:
                        self._record.fail(event)
                    else:
                        self._record.confirm(event)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.errors.append(exc)


@dataclasses.dataclass
class Verdict:
    """The outcome of checking every row against the record."""

    jobs: int
    confirmed: int
    unsure: int
    lost: int
    wrong: list[str]

    @property
    def holds(self) -> bool:
        return self.lost == 0 and not self.wrong


def check(engine: sa.Engine, job_ids: Sequence[int], record: Record) -> Verdict:
    """Compare every job's row (and its kept messages) with ``merge.replay`` of the record."""
    sure, unsure = record.by_job()
    rows, traces = _read(engine, job_ids)
    lost = 0
    wrong = []
    for job_id in job_ids:
        row = rows[job_id]
        candidates = [
            merge.replay(row.start_time, row.initial_message, [*sure[job_id], *extra])
            for extra in _subsets(unsure[job_id])
        ]
        actual = (row.status, row.message, row.end_time)
        matching = [state for state in candidates if (state.status, state.message, state.end_time) == actual]
        if not matching:
            expected = candidates[0]
            wrong.append(
                f"job {job_id}: row {actual} but the record says "
                f"{(expected.status, expected.message, expected.end_time)}"
            )
        state = (matching or candidates)[0]
        lost += sum(1 for event in sure[job_id] if not _traced(event, state, row, traces))
    return Verdict(
        jobs=len(job_ids),
        confirmed=sum(map(len, sure.values())),
        unsure=sum(map(len, unsure.values())),
        lost=lost,
        wrong=wrong,
    )


def _traced(event: events.Event, state: merge.JobState, row: sa.Row, traces: set[tuple[int, str]]) -> bool:
    """False only when the event must have left a mark in the database and did not."""
    if state.terminal is not None and state.terminal.key.event_id == event.event_id:
        return row.terminal_event_id == event.event_id
    if event.message is not None and state.admits(merge.key_of(event)):
        return (event.job_id, event.event_id) in traces
    return True


def _subsets(unsure: list[events.Event]) -> Iterable[tuple[events.Event, ...]]:
    if len(unsure) > _MAX_UNSURE:
        raise AssertionError(f"{len(unsure)} unconfirmed events on one job: too many to check exactly")
    return itertools.chain.from_iterable(itertools.combinations(unsure, n) for n in range(len(unsure) + 1))


def _read(engine: sa.Engine, job_ids: Sequence[int]) -> tuple[dict[int, sa.Row], set[tuple[int, str]]]:
    rows: dict[int, sa.Row] = {}
    traces: set[tuple[int, str]] = set()
    with engine.connect() as conn:
        for start in range(0, len(job_ids), 1000):
            chunk = list(job_ids[start : start + 1000])
            for row in conn.execute(
                sa.select(
                    async_status.c.id,
                    async_status.c.status,
                    async_status.c.message,
                    async_status.c.start_time,
                    async_status.c.end_time,
                    async_status.c.initial_message,
                    async_status.c.terminal_event_id,
                ).where(async_status.c.id.in_(chunk))
            ):
                rows[row.id] = row
            traces.update(
                conn.execute(
                    sa.select(async_status_event.c.job_id, async_status_event.c.event_id).where(
                        async_status_event.c.job_id.in_(chunk)
                    )
                ).all()
            )
    return rows, traces


@dataclasses.dataclass(frozen=True)
class Figures:
    """One scenario's line in the report (docs/reliability.md is rendered from these)."""

    scenario: str
    done: str
    checked: str
    published: int
    confirmed: int
    applied: int
    lost: int
    wrong: int
    dead: int
    jobs: int
    seconds: float
    unconfirmed: int = 0  # publishes that failed for good: checked as "may or may not have arrived"
    scale: str = dataclasses.field(default_factory=lambda: os.environ.get("TRACKER_FAULTS_SCALE", "bounded"))
    database: str = "postgresql"
    finished_at: str = dataclasses.field(default_factory=lambda: timefmt.format_time(timefmt.now()) or "")

    @classmethod
    def of(cls, verdict: Verdict, record: Record, *, dead: int, **rest: object) -> Figures:
        return cls(
            published=record.sent,
            confirmed=verdict.confirmed,
            applied=verdict.confirmed - verdict.lost,
            lost=verdict.lost,
            wrong=len(verdict.wrong),
            dead=dead,
            jobs=verdict.jobs,
            unconfirmed=verdict.unsure,
            **rest,
        )  # type: ignore[arg-type]

    def write(self) -> None:
        """Append these figures as one JSON line to the report file."""
        path = report_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as report:
            report.write(json.dumps(dataclasses.asdict(self)) + "\n")


def conclude(
    *,
    scenario: str,
    done: str,
    checked: str,
    settings: Settings,
    engine: sa.Engine,
    job_ids: Sequence[int],
    record: Record,
    consumers: Sequence[ConsumerProcess],
    started: float,
    expected_dead: int = 0,
    expect_lost: bool = False,
    timeout: float = 120.0,
    stop_within_s: float = STOP_WITHIN_S,
    database: str = "postgresql",
    unacked: Callable[[str], int] = unacked_count,
) -> Figures:
    """Wait for the rows to settle, stop the consumers, check everything, write and assert the figures.

    Holds when every consumer was still running and exits 0 on SIGTERM within ``stop_within_s``,
    the queue is empty (``unacked`` counts what consumers hold: the local broker's by default),
    ``expected_dead`` messages are in the dead-letter queue, and no event
    is lost and no row is wrong. With ``expect_lost`` (a measurement of what a fault loses), the
    rows are only counted, not required to hold: settled means the queue is empty.
    """
    deadline = time.monotonic() + timeout
    while True:
        crashed = [c for c in consumers if not c.alive]
        verdict = check(engine, job_ids, record)
        # Ready and unacked both gone: a message a consumer holds and cannot finish counts too.
        settled = (
            (verdict.holds or expect_lost)
            and ready_count(settings.amqp_url, settings.queue) == 0
            and unacked(settings.queue) == 0
        )
        if settled or crashed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    exits = [c.terminate(timeout=stop_within_s) for c in consumers if c.alive]
    left = ready_count(settings.amqp_url, settings.queue)
    dead = ready_count(settings.amqp_url, settings.dead_queue)
    verdict = check(engine, job_ids, record)
    figures = Figures.of(
        verdict,
        record,
        dead=dead,
        scenario=scenario,
        done=done,
        checked=checked,
        seconds=round(time.monotonic() - started, 1),
        database=database,
    )
    figures.write()

    logs = "\n\n".join(f"--- {c.log_path.name} ---\n{c.tail()}" for c in consumers)
    assert not crashed, f"consumers exited by themselves: {[c.returncode for c in crashed]}\n{logs}"
    assert all(code == 0 for code, _ in exits), f"exit statuses {exits}\n{logs}"
    assert verdict.holds or expect_lost, (
        f"{verdict.lost} lost, {len(verdict.wrong)} wrong rows, e.g.\n" + "\n".join(verdict.wrong[:10]) + f"\n{logs}"
    )
    assert left == 0, f"{left} messages still in the queue"
    assert dead == expected_dead, f"{dead} dead-lettered, expected {expected_dead}\n{logs}"
    return figures
