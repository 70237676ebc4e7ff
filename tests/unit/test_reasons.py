"""Dead-letter reasons as short codes, from the very texts the parser and the consumer write."""

from __future__ import annotations

import pytest

from consumers.status import Delivery, StatusProjector
from tracker import events
from tracker.errors import InvalidEvent, StoreRefused
from tracker.reasons import CODES, reason_code
from tracker.store import Applied

GOOD = (
    b'{"event_id":"0f8fad5b-d9cb-469f-a165-70867728950e","job_id":1,"type":"progress",'
    b'"occurred_at":"2026-01-01T00:00:00Z"}'
)


def reason_of(body: bytes, content_type: str | None = events.CONTENT_TYPE) -> str:
    with pytest.raises(InvalidEvent) as raised:
        events.parse(body, content_type)
    return raised.value.reason


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (GOOD, "text/plain", "invalid_content_type"),
        (GOOD, None, "invalid_content_type"),
        (b" " * (events.MAX_BODY_BYTES + 1), events.CONTENT_TYPE, "too_large"),
        (b'{"job_id": "\xff"}', events.CONTENT_TYPE, "invalid_utf8"),
        (b"{not json", events.CONTENT_TYPE, "invalid_json"),
        (b"", events.CONTENT_TYPE, "invalid_json"),
        (b'{"a": 1, "a": 2}', events.CONTENT_TYPE, "invalid_json"),
        (b'{"job_id": NaN}', events.CONTENT_TYPE, "invalid_json"),
        (b"[" * 10_000, events.CONTENT_TYPE, "invalid_json"),
        (b"[1, 2]", events.CONTENT_TYPE, "invalid_event"),
        (b'"text"', events.CONTENT_TYPE, "invalid_event"),
        (b"{}", events.CONTENT_TYPE, "invalid_event"),
        (GOOD.replace(b'"job_id":1', b'"job_id":0'), events.CONTENT_TYPE, "invalid_event"),
        (GOOD.replace(b'"progress"', b'"done"'), events.CONTENT_TYPE, "invalid_event"),
        (GOOD.replace(b'"2026-01-01T00:00:00Z"', b'"yesterday"'), events.CONTENT_TYPE, "invalid_event"),
        (GOOD[:-1] + b',"message":"a\\u0000b"}', events.CONTENT_TYPE, "invalid_event"),
        (GOOD[:-1] + b',"seq":-1}', events.CONTENT_TYPE, "invalid_event"),
    ],
)
def test_the_parsers_reasons_have_their_codes(body: bytes, content_type: str | None, code: str) -> None:
    assert reason_code(reason_of(body, content_type)) == code


class _Store:
    """A store that knows no job, or refuses every batch."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse

    def apply(self, batch: list[events.Event]) -> Applied:
        if self.refuse:
            raise StoreRefused("CheckViolation", "new row violates check constraint")
        return Applied(0, frozenset(event.job_id for event in batch))


@pytest.mark.parametrize(("refuse", "code"), [(False, "unknown_job"), (True, "refused")])
def test_the_consumers_reasons_have_their_codes(refuse: bool, code: str) -> None:
    outcome = StatusProjector(_Store(refuse)).handle([Delivery(1, GOOD)])  # type: ignore[arg-type]
    assert [reason_code(dead.reason) for dead in outcome.dead] == [code]


def test_a_reason_cut_short_keeps_its_code() -> None:
    reason = reason_of(b"{" + b'"k": 1, ' * 300 + b"}")
    assert reason_code(reason[:999] + "…") == reason_code(reason) == "invalid_json"


@pytest.mark.parametrize("text", ["", "(no x-tracker-reason header)", "(dead-lettered by RabbitMQ: rejected)", "job x"])
def test_anything_else_is_other(text: str) -> None:
    assert reason_code(text) == "other"


def test_every_code_is_short_and_listed() -> None:
    assert len(set(CODES)) == len(CODES)
    assert all(code.isidentifier() and code.islower() and len(code) <= 20 for code in CODES)
