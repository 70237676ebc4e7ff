"""The merge rule of SPEC §3 and §11 as pure functions: a job's row from the set of its events.

The state kept per job is small: the earliest terminal event by key (*t*), with its result or
error; and among the events whose key is at most *t*'s (*R*), the latest one carrying a message,
the latest one carrying a progress, and the earliest ``cancel_requested`` one. Why folding into
it is idempotent and order-independent, and when it needs more than the state:

- *t* only moves earlier. Its result and its error are its own, so they travel with it: the
  row's are read off whichever event is *t*, and no other event is ever needed for them.
- *R* only shrinks: *t* moving earlier takes out the events between the new *t* and the old one,
  and events after the old *t* were never in it. The kept message and progress marks only move
  later within *R*, so each is the latest of its kind among the events folded so far that are
  in *R*. While a mark stays in the new *R* it is still that. When the new *t* lands before it,
  the latest such event at or before the new *t* is one folded earlier but no longer kept: it is
  looked up among the events stored earlier (``history``). The one case that needs more than the
  state, for the message and the progress alike.
- The kept ``cancel_requested`` mark only moves earlier within *R*. When the new *t* lands
  before it, no ``cancel_requested`` event folded so far is in the new *R* (every other one came
  after it, or after the old *t*), so it becomes null without a look-up, and only the batch's own
  can fill it again. No history for it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable
from typing import NamedTuple

from tracker.events import CANCEL_REQUESTED, Event

PENDING = "PENDING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
DEFAULT_MESSAGE = "Async job has started."


class Key(NamedTuple):
    """The order of events: occurred_at (µs), then seq, then event_id as lowercase text."""

    occurred_at: dt.datetime
    seq: int
    event_id: str


class Terminal(NamedTuple):
    """*t*: the earliest terminal event, with what it says of the job's end (SPEC §11)."""

    key: Key
    type: str  # "succeeded" | "failed"
    result_json: str | None = None
    error_code: str | None = None
    error_details_json: str | None = None


class MessageMark(NamedTuple):
    key: Key
    message: str


class ProgressMark(NamedTuple):
    key: Key
    progress: float


class Recalled(NamedTuple):
    """What ``history`` finds at or before a key: the latest stored event carrying a message, and
    the latest carrying a progress (None: none)."""

    message: MessageMark | None = None
    progress: ProgressMark | None = None


History = Callable[[Key], Recalled]
"""The latest stored message event and progress event with key <= the given key."""


def key_of(event: Event) -> Key:
    return Key(event.occurred_at, event.seq, event.event_id)


def terminal_of(event: Event) -> Terminal:
    """A terminal event as *t*."""
    return Terminal(key_of(event), event.type, event.result_json, event.error_code, event.error_details_json)


@dataclasses.dataclass(frozen=True)
class JobState:
    """What the merge keeps of a job; the public row is derived from it."""

    start_time: dt.datetime
    initial_message: str | None
    terminal: Terminal | None = None
    latest_message: MessageMark | None = None
    latest_progress: ProgressMark | None = None
    first_cancel: Key | None = None  # the earliest cancel_requested event in R

    @property
    def status(self) -> str:
        if self.terminal is None:
            return PENDING
        return SUCCEEDED if self.terminal.type == "succeeded" else FAILED

    @property
    def message(self) -> str | None:
        return self.latest_message.message if self.latest_message else self.initial_message

    @property
    def end_time(self) -> dt.datetime | None:
        if self.terminal is None:
            return None
        return max(self.terminal.key.occurred_at, self.start_time)

    @property
    def progress(self) -> float | None:
        return self.latest_progress.progress if self.latest_progress else None

    @property
    def result_json(self) -> str | None:
        return self.terminal.result_json if self.terminal else None

    @property
    def error_code(self) -> str | None:
        return self.terminal.error_code if self.terminal else None

    @property
    def error_details_json(self) -> str | None:
        return self.terminal.error_details_json if self.terminal else None

    @property
    def cancel_requested_at(self) -> dt.datetime | None:
        return self.first_cancel.occurred_at if self.first_cancel else None

    def admits(self, key: Key) -> bool:
        """Whether an event with this key is in R (at or before t), now and forever after."""
        return self.terminal is None or key <= self.terminal.key


def no_history(_key: Key) -> Recalled:
    """History for a job none of whose events were stored before."""
    return Recalled()


def merge(state: JobState, events: Iterable[Event], history: History = no_history) -> JobState:
    """Fold ``events`` (all of ``state``'s job) into ``state``.

    ``history`` must answer for every event folded into this job before that carries a message
    or a progress, which is what ``to_remember`` returns after each fold. Duplicates and any
    order give the same result; on equal keys the state's mark, then the batch's earlier event, stays.
    """
    batch = list(events)
    terminal = state.terminal
    for event in batch:
        if event.terminal:
            key = key_of(event)
            if terminal is None or key < terminal.key:
                terminal = terminal_of(event)

    def admitted(key: Key) -> bool:
        return terminal is None or key <= terminal.key

    latest, progress, cancel = state.latest_message, state.latest_progress, state.first_cancel
    message_left = latest is not None and not admitted(latest.key)
    progress_left = progress is not None and not admitted(progress.key)
    if message_left or progress_left:
        # t moved before a kept mark: fall back to the latest stored one inside the new R.
        assert terminal is not None
        recalled = history(terminal.key)
        if message_left:
            latest = recalled.message
        if progress_left:
            progress = recalled.progress
    if cancel is not None and not admitted(cancel):
        cancel = None  # and no other cancel_requested event folded so far is in R (module docstring)
    for event in batch:
        key = key_of(event)
        if not admitted(key):
            continue
        if event.message is not None and (latest is None or key > latest.key):
            latest = MessageMark(key, event.message)
        if event.progress is not None and (progress is None or key > progress.key):
            progress = ProgressMark(key, event.progress)
        if event.type == CANCEL_REQUESTED and (cancel is None or key < cancel):
            cancel = key
    return dataclasses.replace(
        state, terminal=terminal, latest_message=latest, latest_progress=progress, first_cancel=cancel
    )


def to_remember(state: JobState, events: Iterable[Event]) -> list[Event]:
    """The events of a fold that ``history`` must hold afterwards.

    Only events inside R that carry a message or a progress can ever be needed again, since R only shrinks.
    """
    return [e for e in events if (e.message is not None or e.progress is not None) and state.admits(key_of(e))]


def replay(start_time: dt.datetime, initial_message: str | None, events: Iterable[Event]) -> JobState:
    """The state of a job from the whole set of its events, transcribed from SPEC §3 and §11 by sorting.

    A second, independent statement of the rule: the incremental ``merge`` must agree with it.
    """
    ordered = sorted({e.event_id: e for e in events}.values(), key=key_of)
    terminal = next((terminal_of(e) for e in ordered if e.terminal), None)
    in_r = [e for e in ordered if terminal is None or key_of(e) <= terminal.key]
    messages = [MessageMark(key_of(e), e.message) for e in in_r if e.message is not None]
    progresses = [ProgressMark(key_of(e), e.progress) for e in in_r if e.progress is not None]
    cancels = [key_of(e) for e in in_r if e.type == CANCEL_REQUESTED]
    return JobState(
        start_time,
        initial_message,
        terminal,
        messages[-1] if messages else None,
        progresses[-1] if progresses else None,
        cancels[0] if cancels else None,
    )
