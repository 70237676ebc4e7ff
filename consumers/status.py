"""Deliveries to outcomes: parse, fold into the store, and say what to dead-letter. No pika, no SQLAlchemy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from tracker import cancels, events
from tracker.errors import InvalidEvent, StoreRefused
from tracker.merge import FAILED
from tracker.model import Applied, Ended
from tracker.store import JobStore


@dataclasses.dataclass(slots=True)
class Delivery:
    """One message as the broker handed it over; not to be changed once made.

    Not ``frozen``: one is made for every message on the connection's thread, and a frozen
    dataclass is slower to make, each field set through ``object.__setattr__`` (the figures are in
    docs/performance.md, "What was changed for speed").
    """

    tag: int
    body: bytes
    content_type: str | None = events.CONTENT_TYPE
    routing_key: str = ""
    headers: dict[str, object] | None = None
    message_id: str | None = None


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A delivery to republish to the dead-letter exchange, with the reason for ``x-tracker-reason``."""

    delivery: Delivery
    reason: str
    # The event's type when the body was an event (unknown job, refused), for the metrics.
    type: str | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The result of one committed batch: what was applied and what must be dead-lettered.

    ``applied_events`` are the applied events themselves, for the metrics (types, lag), when the
    maker has them; ``applied`` is always their number. ``ended``: the jobs the batch ended
    (``Applied.ended``), for the duration metric.
    """

    applied: int
    dead: tuple[DeadLetter, ...]
    applied_events: tuple[events.Event, ...] = ()
    ended: tuple[Ended, ...] = ()


class StatusProjector:
    """Turns batches of deliveries into committed rows.

    ``handle`` either commits the batch's effect and returns the outcome, or raises
    StoreUnavailable, in which case the caller retries the same batch. That has committed nothing,
    or, while a refused batch was being halved, some halves: applying them again changes nothing.

    ``on_applied``, if given, is told what each committed fold did, on the writer's thread (the
    webhooks' deliverer is woken so). ``on_cancelled``, if given, is told who ended each job that
    a committed fold ended by its cancellation (``worker`` or ``tracker``, SPEC §12).
    """

    def __init__(
        self,
        store: JobStore,
        on_applied: Callable[[Applied], None] | None = None,
        on_cancelled: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._on_applied = on_applied
        self._on_cancelled = on_cancelled

    def handle(self, deliveries: Sequence[Delivery]) -> Outcome:
        """Runs on a writer thread for each batch: parse, apply, and say what to dead-letter.

        Bad input and events whose own data the database refuses are dead letters, never an
        exception. Raises StoreUnavailable when the database is away, and StoreBroken when it
        cannot fold anything (its schema or grants): retry the same batch, dead-letter nothing.
        """
        dead: list[DeadLetter] = []
        parsed: list[tuple[Delivery, events.Event]] = []
        for delivery in deliveries:
            try:
                parsed.append((delivery, events.parse(delivery.body, delivery.content_type)))
            except InvalidEvent as exc:
                dead.append(DeadLetter(delivery, exc.reason))
        ended: list[Ended] = []
        applied, refused = self._apply(parsed, ended)
        dead.extend(refused)
        return Outcome(applied=len(applied), dead=tuple(dead), applied_events=tuple(applied), ended=tuple(ended))

    def _apply(
        self, parsed: list[tuple[Delivery, events.Event]], ended: list[Ended]
    ) -> tuple[list[events.Event], list[DeadLetter]]:
        """Fold ``parsed``, halving it on a refusal; adds the jobs each committed fold ended to ``ended``."""
        if not parsed:
            return [], []
        try:
            result = self._store.apply([event for _, event in parsed])
        except StoreRefused as exc:
            # The database refused data that passed validation (StoreRefused is only for errors
            # about the data: tracker.store.engine.classify). Halve the batch until the event it
            # refuses stands alone, so one poison message cannot stall the queue.
            if len(parsed) == 1:
                # Logged once, with every other dead letter, when it has been dead-lettered.
                return [], [DeadLetter(parsed[0][0], f"database refused the event: {exc.error}", parsed[0][1].type)]
            middle = len(parsed) // 2
            first_applied, first_dead = self._apply(parsed[:middle], ended)
            second_applied, second_dead = self._apply(parsed[middle:], ended)
            return first_applied + second_applied, first_dead + second_dead
        ended.extend(result.ended)
        if self._on_applied is not None:
            self._on_applied(result)
        if self._on_cancelled is not None and result.ended:
            failed = [job.job_id for job in result.ended if job.status == FAILED]
            for by in cancels.cancelled_by(failed, (event for _, event in parsed)):
                self._on_cancelled(by)
        if not result.missing_jobs:
            return [event for _, event in parsed], []
        missing = result.missing_jobs
        dead = [
            DeadLetter(delivery, f"job {event.job_id} does not exist", event.type)
            for delivery, event in parsed
            if event.job_id in missing
        ]
        return [event for _, event in parsed if event.job_id not in missing], dead
