"""The wire format: every rule of SPEC §3's table enforced, each with a specific reason."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker import events, timefmt

GOOD = {
    "event_id": "6F9619FF-8B86-D011-B42D-00C04FC964FF",
    "job_id": 42,
    "type": "progress",
    "occurred_at": "2021-02-18T17:13:56.352261+01:00",
    "message": "copying",
    "seq": 3,
}


def body(**changes) -> bytes:
    document = {**GOOD, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def reason_for(raw: bytes, content_type: str | None = "application/json") -> str:
    with pytest.raises(events.InvalidEvent) as caught:
        events.parse(raw, content_type)
    return caught.value.reason


def test_a_good_event_parses_normalised():
    event = events.parse(body(extra_field={"ignored": True}))
    assert event.event_id == "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    assert event.occurred_at == dt.datetime(2021, 2, 18, 16, 13, 56, 352261, tzinfo=dt.UTC)
    assert (event.job_id, event.type, event.message, event.seq) == (42, "progress", "copying", 3)


def test_optional_fields_default():
    event = events.parse(body(message=..., seq=...))
    assert event.message is None and event.seq == 0


@pytest.mark.parametrize(
    ("raw", "content_type", "expected"),
    [
        (b'{"event_id": "x"', "application/json", "body is not valid JSON"),
        (b"\xc3\x28", "application/json", "body is not valid UTF-8"),
        (b"[]", "application/json", "body must be a JSON object, not an array"),
        (b'"text"', "application/json", "body must be a JSON object, not a string"),
        (b"null", "application/json", "body must be a JSON object, not null"),
        (body(), "text/plain", "content_type must be application/json"),
        (body(), None, "content_type must be application/json"),
        (b" " * (64 * 1024 + 1), "application/json", "over the limit of 65536"),
        (body(job_id=...), "application/json", "job_id: is required"),
        (body(job_id="42"), "application/json", "job_id: must be an integer"),
        (body(job_id=42.0), "application/json", "job_id: must be an integer"),
        (body(job_id=True), "application/json", "job_id: must be an integer"),
        (body(job_id=0), "application/json", "job_id: must be at least 1"),
        (body(job_id=-7), "application/json", "job_id: must be at least 1"),
        (body(job_id=2**63), "application/json", "job_id: must be at most 9223372036854775807"),
        (body(type="paused"), "application/json", "type: must be one of progress, succeeded, failed"),
        (body(type=None), "application/json", "type: must be one of"),
        (body(event_id="not-a-uuid"), "application/json", "event_id: must be a UUID"),
        (body(event_id=123), "application/json", "event_id: must be a UUID string"),
        (body(occurred_at="2021-02-18T17:13:56"), "application/json", "occurred_at: must be an RFC 3339"),
        (body(occurred_at="2021-02-30T00:00:00Z"), "application/json", "occurred_at: is not a valid date"),
        (body(occurred_at=1613668436), "application/json", "occurred_at: must be an RFC 3339 timestamp string"),
        (body(message="x" * 4097), "application/json", "message: must be at most 4096 characters"),
        (body(message=["list"]), "application/json", "message: must be a string or null"),
        (body(message="nul\x00byte"), "application/json", "message: must not contain NUL"),
        (b'{"job_id": 1, "job_id": 2}', "application/json", "body repeats the key 'job_id'"),
        (body(seq=-1), "application/json", "seq: must be at least 0"),
        (body(seq="1"), "application/json", "seq: must be an integer"),
    ],
)
def test_each_broken_rule_has_a_specific_reason(raw, content_type, expected):
    assert expected in reason_for(raw, content_type)


def test_nan_and_lone_surrogates_are_refused():
    assert "NaN" in reason_for(b'{"job_id": NaN}')
    assert "lone surrogate" in reason_for(body(message="\ud800"))


def test_message_of_exactly_4096_characters_is_accepted():
    assert len(events.parse(body(message="é" * 4096)).message) == 4096


def test_content_type_parameters_are_allowed():
    assert events.parse(body(), "application/json; charset=utf-8").job_id == 42


def test_fractions_beyond_microseconds_are_cut_not_rounded():
    event = events.parse(body(occurred_at="2021-02-18T17:13:56.9999999Z"))
    assert event.occurred_at.microsecond == 999999


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_invalid_event(raw):
    try:
        events.parse(raw)
    except events.InvalidEvent as exc:
        assert exc.reason


@given(st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(9000, 1, 1), timezones=st.just(dt.UTC)))
def test_time_format_round_trips(instant):
    text = timefmt.format_time(instant)
    assert len(text) == 27 and text.endswith("Z")
    assert timefmt.parse_time(text) == instant


def test_to_wire_round_trips_through_parse():
    event = events.new_event(9, "failed", "boom", seq=2)
    assert events.parse(json.dumps(event.to_wire()).encode()) == event


# The plain path (orjson and hand checks) must answer exactly as the full parse (pydantic) does:
# for every body it takes, the same Event; every other body it leaves to the full parse.

_FIELD_VALUES = {
    "event_id": st.one_of(
        st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.text(max_size=40), st.integers(), st.none()
    ),
    "job_id": st.one_of(
        st.integers(min_value=-2, max_value=2**64 + 1),
        st.booleans(),
        st.floats(allow_nan=False),
        st.text(max_size=3),
        st.none(),
    ),
    "type": st.one_of(st.sampled_from(["progress", "succeeded", "failed", "Progress", "done", ""]), st.integers()),
    "occurred_at": st.one_of(
        st.datetimes(timezones=st.just(dt.UTC)).map(lambda d: d.isoformat()),
        st.sampled_from(
            [
                "2021-02-18T17:13:56Z",
                "2021-02-18T17:13:60Z",
                "2021-02-18",
                "2021-02-30T00:00:00Z",
                "2021-02-18T17:13:56.1234567-05:30",
            ]
        ),
        st.text(max_size=30),
        st.integers(),
    ),
    "message": st.one_of(
        st.none(),
        st.text(max_size=50),
        st.text(min_size=4095, max_size=4097, alphabet="ab"),
        st.integers(),
        st.lists(st.integers(), max_size=2),
    ),
    "seq": st.one_of(
        st.integers(min_value=-2, max_value=2**63 + 1), st.none(), st.floats(allow_nan=False), st.booleans()
    ),
}
_EXTRA = st.dictionaries(
    st.text(max_size=5),
    st.one_of(st.integers(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2)),
    max_size=2,
)


_VALID_VALUES = {
    "event_id": st.uuids().map(str),
    "job_id": st.integers(min_value=1, max_value=2**63 - 1),
    "type": st.sampled_from(["progress", "succeeded", "failed"]),
    "occurred_at": st.datetimes(timezones=st.just(dt.UTC)).map(timefmt.format_time),
    "message": st.one_of(st.none(), st.text(max_size=50)),
    "seq": st.integers(min_value=0, max_value=2**63 - 1),
}


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    """Mostly valid bodies, some with a field or two broken, missing, repeated, or written oddly."""
    broken = draw(st.sets(st.sampled_from(sorted(_FIELD_VALUES)), max_size=2)) if draw(st.booleans()) else set()
    document = {name: draw(_FIELD_VALUES[name] if name in broken else _VALID_VALUES[name]) for name in _FIELD_VALUES}
    if draw(st.integers(0, 4)) == 0:
        document.pop(draw(st.sampled_from(sorted(_FIELD_VALUES))))
    document.update(draw(_EXTRA))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
    text = json.dumps(document, ensure_ascii=draw(st.booleans()), separators=separators)
    if document and draw(st.integers(0, 4)) == 0:  # a key said twice, the first time with another value
        name = draw(st.sampled_from(sorted(document)))
        said = json.dumps(draw(_FIELD_VALUES.get(name, st.integers())))
        text = "{" + json.dumps(name) + separators[1] + said + separators[0] + text[1:]
    return text.encode("utf-8", "surrogatepass")


def _full(raw: bytes) -> events.Event | str:
    try:
        return events._parse_fully(raw)  # noqa: SLF001 - the two private parse paths are what this test compares
    except events.InvalidEvent as exc:
        return "invalid: " + exc.reason


@settings(max_examples=600)
@given(_bodies())
def test_the_plain_path_takes_only_what_the_full_parse_takes_and_makes_the_same_event(raw):
    plain = events._parse_plain(raw)  # noqa: SLF001 - the two private parse paths are what this test compares
    if plain is not None:
        assert _full(raw) == plain
    parsed: events.Event | str
    try:
        parsed = events.parse(raw)
    except events.InvalidEvent as exc:
        parsed = "invalid: " + exc.reason
    assert parsed == _full(raw)


@pytest.mark.parametrize(
    "raw",
    [
        body(),
        body(message=None),
        body(seq=...),
        body(message=..., extra="x"),
        json.dumps({**GOOD, "message": "10:00 UTC"}, separators=(" ,", " : ")).encode(),
    ],
)
def test_plain_bodies_take_the_plain_path(raw):
    assert events._parse_plain(raw) == events._parse_fully(raw)  # noqa: SLF001 - the two private parse paths are what this test compares


@pytest.mark.parametrize(
    "raw",
    [
        b'{"job_id": 1, ' + body()[1:],  # a repeated key
        body(message='say "hi"'),  # an escape
        body(extra={"nested": 1}),
        body(job_id=2**64),  # orjson reads this as a float
        body(occurred_at="2021-02-18"),
    ],
)
def test_other_bodies_are_left_to_the_full_parse(raw):
    assert events._parse_plain(raw) is None  # noqa: SLF001 - the two private parse paths are what this test compares
