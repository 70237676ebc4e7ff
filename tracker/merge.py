"""The merge rule of SPEC §3 as pure functions: a job's row from the set of its events.

The state kept per job is small: the earliest terminal event by key (*t*) and the latest message
event whose key is at most *t*'s. Both only move one way (t earlier, the message later within R),
so folding is idempotent and order-independent. The one case that needs more than the state is a
new *t* that lands before the kept message: then the latest message at or before the new *t* is
looked up among the message events stored earlier (``history``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable
from typing import NamedTuple

from tracker.events import Event

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
    key: Key
    type: str  # "succeeded" | "failed"


class MessageMark(NamedTuple):
    key: Key
    message: str


History = Callable[[Key], "MessageMark | None"]
"""Latest stored message event with key <= the given key, or None."""


def key_of(event: Event) -> Key:
    return Key(event.occurred_at, event.seq, event.event_id)


@dataclasses.dataclass(frozen=True)
class JobState:
    """What the merge keeps of a job; the public row is derived from it."""

    start_time: dt.datetime
    initial_message: str | None
    terminal: Terminal | None = None
    latest_message: MessageMark | None = None

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

    def admits(self, key: Key) -> bool:
        """Whether an event with this key is in R (at or before t), now and forever after."""
        return self.terminal is None or key <= self.terminal.key


def no_history(_key: Key) -> MessageMark | None:
    """History for a job none of whose events were stored before."""
    return None


def merge(state: JobState, events: Iterable[Event], history: History = no_history) -> JobState:
    """Fold ``events`` (all of ``state``'s job) into ``state``.

    ``history`` must answer for every message event folded into this job before, which is what
    ``to_remember`` returns after each fold. Duplicates and any order give the same result.
    """
    batch = list(events)
    terminal = state.terminal
    for event in batch:
        if event.terminal:
            key = key_of(event)
            if terminal is None or key < terminal.key:
                terminal = Terminal(key, event.type)

    def admitted(key: Key) -> bool:
        return terminal is None or key <= terminal.key

    latest = state.latest_message
    if latest is not None and not admitted(latest.key):
        # t moved before the kept message: fall back to the latest stored one inside the new R.
        assert terminal is not None
        latest = history(terminal.key)
    for event in batch:
        if event.message is None:
            continue
        key = key_of(event)
        if admitted(key) and (latest is None or key > latest.key):
            latest = MessageMark(key, event.message)
    return dataclasses.replace(state, terminal=terminal, latest_message=latest)


def to_remember(state: JobState, events: Iterable[Event]) -> list[Event]:
    """The events of a fold that ``history`` must hold afterwards.

    Only message events inside R can ever be needed again, since R only shrinks.
    """
    return [e for e in events if e.message is not None and state.admits(key_of(e))]


def replay(start_time: dt.datetime, initial_message: str | None, events: Iterable[Event]) -> JobState:
    """The state of a job from the whole set of its events, transcribed from SPEC §3 by sorting.

    A second, independent statement of the rule: the incremental ``merge`` must agree with it.
    """
    ordered = sorted({e.event_id: e for e in events}.values(), key=key_of)
    terminal = next((Terminal(key_of(e), e.type) for e in ordered if e.terminal), None)
    in_r = [e for e in ordered if terminal is None or key_of(e) <= terminal.key]
    with_message = [e for e in in_r if e.message is not None]
    last = with_message[-1] if with_message else None
    latest = MessageMark(key_of(last), last.message) if last and last.message is not None else None
    return JobState(start_time, initial_message, terminal, latest)
