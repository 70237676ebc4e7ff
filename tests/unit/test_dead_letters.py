"""Dead letters without a broker: reason codes, what --reason matches, how a dead letter is shown
and with which properties it is replayed."""

from __future__ import annotations

import pika
import pytest

from tests.integration.test_bad_input import corpus
from tracker import events
from tracker.cli import _parser
from tracker.cli.deadletters import DeadLetter, describe, preview, reason_of
from tracker.reasons import CODES, NO_REASON, ReasonFilter, broker_reason, reason_code


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("job 5 does not exist", "unknown_job"),
        ("job 9000000000000000000 does not exist", "unknown_job"),
        ("body is not valid JSON: Expecting value", "invalid_json"),
        ("body is not valid JSON: nested too deeply", "invalid_json"),
        ("body holds NaN, which is not JSON", "invalid_json"),
        ("body holds -Infinity, which is not JSON", "invalid_json"),
        ("body holds the number 1e400, out of range", "invalid_json"),
        ("result: must be at most 16384 bytes as compact JSON, not 16385", "too_large_value"),
        ("error: details must be at most 16384 bytes as compact JSON, not 20000", "too_large_value"),
        ("error: code must be 1 to 64 characters of a-z 0-9 _ . -", "invalid_field"),
        ("progress: must be a number from 0 to 100", "invalid_field"),
        ("body is not valid UTF-8 (byte 17)", "invalid_utf8"),
        ("body must be a JSON object, not an array", "not_an_object"),
        ("body repeats the key 'type'", "duplicate_key"),
        ("body is 66612 bytes, over the limit of 65536", "too_large"),
        ("content_type must be application/json, not 'text/plain'", "invalid_content_type"),
        ("content_type must be application/json, not None", "invalid_content_type"),
        ("job_id: must be at least 1", "invalid_field"),
        ("event_id: is required; job_id: is required", "invalid_field"),
        ("message: must not contain NUL characters", "invalid_field"),
        ("database refused the event: DataError", "database_refused"),
        (broker_reason("rejected"), "broker_rejected"),
        (broker_reason("expired"), "broker_expired"),
        (broker_reason("maxlen"), "broker_maxlen"),
        (broker_reason("delivery_limit"), "broker_delivery_limit"),
        (broker_reason("something new"), "other"),
        (NO_REASON, "no_reason"),
        ("", "other"),
        ("the job 5 does not exist, says someone", "other"),
        ("job 5 does not exist!", "other"),
    ],
)
def test_a_reason_has_a_short_code(reason, code):
    assert reason_code(reason) == code
    assert code in CODES


def test_every_reason_the_parser_gives_has_a_specific_code():
    """Each kind of bad input in the integration corpus gets a code that says what kind it is."""
    expected = {
        "not valid JSON": "invalid_json",
        "nested too deeply": "invalid_json",
        "body holds": "invalid_json",
        "UTF-8": "invalid_utf8",
        "must be a JSON object": "not_an_object",
        "repeats the key": "duplicate_key",
        "over the limit": "too_large",
        "bytes as compact JSON": "too_large_value",
        "content_type": "invalid_content_type",
        "does not exist": "unknown_job",
    }
    for item in corpus(1):
        try:
            events.parse(item.body, item.content_type)
            reason = f"job {events.parse(item.body).job_id} does not exist"  # valid: only the job is missing
        except events.InvalidEvent as exc:
            reason = exc.reason
        code = next((code for part, code in expected.items() if part in item.reason), "invalid_field")
        assert reason_code(reason) == code, (item.kind, reason)


def test_a_reason_cut_short_by_the_consumer_keeps_its_code():
    assert reason_code("body repeats the key 'kkkkkkkkkkkk…") == "duplicate_key"
    assert reason_code("message: must be at most 4096 characters, not 40…") == "invalid_field"


def test_reason_filter_takes_a_code_or_one_exact_text():
    assert ReasonFilter(None).matches("anything")
    by_code = ReasonFilter("unknown_job")
    assert by_code.matches("job 5 does not exist") and by_code.matches("job 6 does not exist")
    assert not by_code.matches("body is not valid JSON: Expecting value")
    exact = ReasonFilter("job 5 does not exist")
    assert exact.matches("job 5 does not exist")
    assert not exact.matches("job 6 does not exist")
    assert str(by_code) == "reason unknown_job" and str(ReasonFilter(None)) == "any reason"


def test_reason_filter_refuses_a_misspelt_code():
    with pytest.raises(ValueError, match=r"unknown reason code 'unkown_job'.*unknown_job"):
        ReasonFilter("unkown_job")


def test_reason_of_reads_our_header_then_rabbitmqs():
    assert reason_of({"x-tracker-reason": b"job 5 does not exist"}) == "job 5 does not exist"
    assert reason_of({"x-tracker-reason": "job 5 does not exist"}) == "job 5 does not exist"
    assert reason_of({"x-first-death-reason": b"expired"}) == broker_reason("expired")
    assert reason_of({}) == NO_REASON


def test_preview_is_one_printable_line_cut_at_the_limit():
    assert preview(b'{"a": 1}') == '{"a": 1}'
    assert preview(b"line\nnext\x00\xff") == "line\\nnext\\x00\\xff"
    assert preview(b"x" * 500, chars=10) == "x" * 10 + "…"
    assert preview("é".encode() * 3) == "ééé"


def dead_copy(**headers: object) -> DeadLetter:
    properties = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id="0b5e",
        headers={"trace-id": "t1", "x-tracker-reason": "job 5 does not exist", **headers},
    )
    return DeadLetter.from_message("job.progress", properties, b'{"job_id": 5}')


def test_a_dead_letter_goes_back_with_its_routing_key_id_and_own_headers_only():
    letter = dead_copy(**{"x-tracker-routing-key": "job.succeeded", "x-death": [{"count": 1}]})
    assert (letter.reason, letter.code, letter.routing_key) == ("job 5 does not exist", "unknown_job", "job.succeeded")
    again = letter.replay_properties()
    assert (again.message_id, again.content_type, again.delivery_mode) == ("0b5e", "application/json", 2)
    assert again.headers == {"trace-id": "t1"}
    assert dead_copy().routing_key == "job.progress"  # no header: the dead copy's own key


def test_describe_says_reason_routing_key_and_body_start():
    lines = describe(dead_copy()).splitlines()
    assert lines == [
        "unknown_job: job 5 does not exist",
        "    routing key job.progress, message_id 0b5e, 13 bytes",
        '    {"job_id": 5}',
    ]


@pytest.mark.parametrize(
    ("argv", "action", "reason", "limit"),
    [
        (["dead", "show"], "show", None, 20),
        (["dead", "show", "--reason", "unknown_job", "--limit", "3"], "show", "unknown_job", 3),
        (["dead", "replay", "--reason", "job 5 does not exist"], "replay", "job 5 does not exist", None),
        (["dead", "drop", "--limit", "7"], "drop", None, 7),
    ],
)
def test_the_dead_commands_parse(argv, action, reason, limit):
    args = _parser().parse_args(argv)
    assert (args.action, args.reason, args.limit) == (action, reason, limit)


def test_plain_tracker_dead_still_counts():
    args = _parser().parse_args(["dead", "--limit", "5"])
    assert (args.action, args.limit, args.handler.__name__) == (None, 5, "_dead")


def test_describe_escapes_control_characters_in_every_field_from_the_broker():
    properties = pika.BasicProperties(
        message_id="m1\x1b]0;owned\x07\nFORGED LINE",
        headers={"x-tracker-reason": "job 5 does not exist\x1b[2J", "x-tracker-routing-key": "job.\x1b[31mprogress"},
    )
    shown = describe(DeadLetter.from_message("job.progress", properties, b'{"a": "\x1b[0m"}'))
    lines = shown.split("\n")
    assert len(lines) == 3 and all(line.isprintable() for line in lines), lines
    assert lines[0] == r"other: job 5 does not exist\x1b[2J"
    assert lines[1] == r"    routing key job.\x1b[31mprogress, message_id m1\x1b]0;owned\x07\nFORGED LINE, 13 bytes"
    assert lines[2] == r'    {"a": "\x1b[0m"}'
