"""The move of a classic dead queue into a quorum one, without a broker: which step comes next
from what the broker holds, and what ``tracker migrate`` prints."""

from __future__ import annotations

import pytest

from tracker.cli.dead_queue_move import Found, Kind, Moved, Step, next_step


@pytest.mark.parametrize(
    ("dead", "parked", "step"),
    [
        (Kind.CLASSIC, False, Step.PARK),  # an older tracker's queue: the move begins
        (Kind.CLASSIC, True, Step.PARK),  # stopped while parking: park the rest
        (Kind.ABSENT, True, Step.RETURN),  # stopped between deleting the classic queue and declaring the quorum one
        (Kind.QUORUM, True, Step.RETURN),  # stopped while returning: return the rest
        (Kind.QUORUM, False, Step.DONE),  # moved, or never classic
        (Kind.ABSENT, False, Step.DONE),  # never declared: the consumers declare it
    ],
)
def test_what_the_broker_holds_says_which_step_comes_next(dead: Kind, parked: bool, step: Step) -> None:
    assert next_step(Found(dead, parked)) is step


def test_the_summary_says_what_was_found_and_counts_before_and_after() -> None:
    def summary(dead: Kind, parked: bool, before: int, after: int) -> str:
        return Moved("d", Found(dead, parked), before, after).summary()

    assert summary(Kind.CLASSIC, False, 12, 12) == (
        "dead-letter queue d: moved from a classic queue into a quorum queue; 12 messages before, 12 after"
    )
    assert summary(Kind.ABSENT, True, 5, 6) == (
        "dead-letter queue d: finished the move an earlier run began, into a quorum queue; 5 messages before, 6 after"
    )
    assert summary(Kind.QUORUM, False, 3, 3) == "dead-letter queue d: a quorum queue, 3 messages"
    assert summary(Kind.ABSENT, False, 0, 0) == (
        "dead-letter queue d: not declared yet (the consumers declare it, a quorum queue)"
    )
