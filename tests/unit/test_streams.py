"""The pure parts of SPEC §13's streams: who asks for one, the cursor a client resumes from, the frames."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from api.streams import job_frame, last_event_id, position_frame, reset_frame, wants_event_stream
from tracker.model import Job
from tracker.rendering import job_view


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        ("text/event-stream", True),
        ("Text/Event-Stream; charset=utf-8", True),
        ("application/json, text/event-stream;q=0.5", True),
        ("text/event-stream;q=0", False),
        ("text/event-stream; q=0.000", False),
        ("*/*", False),
        ("text/*", False),
        ("application/json", False),
        ("", False),
        (None, False),
    ],
)
def test_only_a_named_event_stream_is_a_request_for_one(accept: str | None, wanted: bool) -> None:
    assert wants_event_stream(accept) is wanted


@pytest.mark.parametrize(
    ("header", "cursor"),
    [(None, None), ("", None), ("  ", None), ("42", 42), (" 7 ", 7), ("0", 0), ("-1", -1), ("x", -1), ("1" * 20, -1)],
)
def test_last_event_id_is_a_cursor_or_one_that_cannot_be_resumed(header: str | None, cursor: int | None) -> None:
    assert last_event_id(header) == cursor


def test_a_job_frame_carries_the_row_as_get_renders_it_on_one_line() -> None:
    job = Job(3, "PENDING", dt.datetime(2026, 12, 7, tzinfo=dt.UTC), None, "line one\nline two\r\u2028")
    frame = job_frame(12, job)
    head, data = frame.split(b"data: ")
    assert head == b"event: job\nid: 12\n"
    assert data.endswith(b"\n\n") and data.count(b"\n") == 2 and b"\r" not in data
    assert orjson.loads(data) == job_view(job)


def test_a_reset_is_dispatched_and_a_position_is_not() -> None:
    # An event with no data is not dispatched (the HTML standard's event stream interpretation).
    assert reset_frame(5) == b'event: reset\nid: 5\ndata: {"reload":true}\n\n'
    assert position_frame(5) == b"id: 5\n\n"
