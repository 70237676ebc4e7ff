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
        (body(type="paused"), "application/json", "type: must be one of progress, succeeded, failed, cancel_requested"),
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

# JSON values as results and details: nested, with the numbers the two parsers may read apart
# (integers beyond 64 bits, large and tiny doubles) and strings holding "e+".
_JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        st.sampled_from(["e+", "1e+5", "é"]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)
# Written into a body as they are (json.dumps cannot say them): a repeated key at depth, numbers
# beyond a double, nesting deeper than orjson writes.
_RAW = st.sampled_from(
    [
        '{"k": 1, "k": 2}',
        '[{"a": {"b": 1, "b": 1}}]',
        "1e400",
        "-1e400",
        "1" * 400,
        "[" * 300 + "]" * 300,
        "[" * 200 + "]" * 200,
        "18446744073709551616",
        "1.0e+2",
    ]
)
_NEAR_LIMIT = st.integers(min_value=events.MAX_JSON_BYTES - 4, max_value=events.MAX_JSON_BYTES).map(
    lambda size: "é" * ((size - 2) // 2) + "a" * ((size - 2) % 2)
)
_VALID_RESULTS = st.one_of(st.none(), _JSON_VALUES, _NEAR_LIMIT)
_ERROR_CODES = st.one_of(
    st.sampled_from(["lost", "timeout", "a", "x" * 64]), st.from_regex(r"[a-z0-9_.-]{1,64}", fullmatch=True)
)


class _Raw(str):
    """A JSON text to be written into the body as it is."""


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
    "type": st.one_of(
        st.sampled_from(["progress", "succeeded", "failed", "cancel_requested", "Progress", "done", ""]),
        st.integers(),
    ),
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
    "progress": st.one_of(
        st.floats(allow_nan=False),
        st.integers(min_value=-2, max_value=2**65),
        st.sampled_from([0, 100, -0.0, 100.0000001, -1e-300]),
        st.booleans(),
        st.none(),
        st.text(max_size=3),
    ),
    "result": st.one_of(
        _JSON_VALUES,
        _RAW.map(_Raw),
        st.integers(min_value=events.MAX_JSON_BYTES - 2, max_value=events.MAX_JSON_BYTES + 2).map(
            lambda n: "a" * (n - 2)
        ),
    ),
    "error": st.one_of(
        st.fixed_dictionaries({"code": _ERROR_CODES}, optional={"details": st.one_of(_JSON_VALUES, _RAW.map(_Raw))}),
        st.fixed_dictionaries({"code": st.one_of(st.text(max_size=66), st.integers(), st.none())}),
        st.dictionaries(st.text(max_size=4), _JSON_VALUES, max_size=2),
        _JSON_VALUES,
    ),
}
_EXTRA = st.dictionaries(
    st.text(max_size=5),
    st.one_of(st.integers(), st.text(max_size=5), st.none(), _JSON_VALUES, _RAW.map(_Raw)),
    max_size=2,
)

_VALID_VALUES = {
    "event_id": st.uuids().map(str),
    "job_id": st.integers(min_value=1, max_value=2**63 - 1),
    "type": st.sampled_from(["progress", "succeeded", "failed", "cancel_requested"]),
    "occurred_at": st.datetimes(timezones=st.just(dt.UTC)).map(timefmt.format_time),
    "message": st.one_of(st.none(), st.text(max_size=50)),
    "seq": st.integers(min_value=0, max_value=2**63 - 1),
    "progress": st.one_of(st.integers(0, 100), st.floats(min_value=0, max_value=100)),
    "result": _VALID_RESULTS,
    "error": st.fixed_dictionaries({"code": _ERROR_CODES}, optional={"details": _VALID_RESULTS}),
}
# SPEC §11's fields, valid only on some types: a valid body has them only there, and not always.
_ONLY_ON = {"result": "succeeded", "error": "failed"}
_ONE_IN_FIVE = st.sampled_from([False, False, False, False, True])  # hypothesis draws integers' bounds often


def _written(document: dict, separators: tuple[str, str], ensure_ascii: bool) -> str:
    """``document`` as JSON text, its _Raw values written as they are."""
    raw: list[str] = []

    def placeholder(value: object) -> object:
        if isinstance(value, dict):
            return {k: placeholder(v) for k, v in value.items()}
        if isinstance(value, list):
            return [placeholder(v) for v in value]
        if isinstance(value, _Raw):
            raw.append(str(value))
            return f"\x00raw{len(raw) - 1}\x00"
        return value

    text = json.dumps(placeholder(document), ensure_ascii=ensure_ascii, separators=separators)
    for n, value in enumerate(raw):
        text = text.replace(json.dumps(f"\x00raw{n}\x00"), value)
    return text


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    """Mostly valid bodies, some with a field or two broken, missing, repeated, or written oddly."""
    broken = draw(st.sets(st.sampled_from(sorted(_FIELD_VALUES)), max_size=2)) if draw(st.booleans()) else set()
    document = {name: draw(_FIELD_VALUES[name] if name in broken else _VALID_VALUES[name]) for name in _FIELD_VALUES}
    for name, kind in _ONLY_ON.items():
        if name not in broken and (document["type"] != kind or draw(st.booleans())):
            del document[name]
    if "progress" not in broken and draw(st.booleans()):
        del document["progress"]
    if draw(_ONE_IN_FIVE):
        document.pop(draw(st.sampled_from(sorted(document))))
    document.update(draw(_EXTRA))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
    text = _written(document, separators, ensure_ascii=draw(st.booleans()))
    if document and draw(_ONE_IN_FIVE):  # a key said twice, the first time with another value
        name = draw(st.sampled_from(sorted(document)))
        said = _written({"": draw(_FIELD_VALUES.get(name, st.integers()))}, separators, False)
        said = said[len('{"":') + len(separators[1]) - 1 : -1]
        text = "{" + json.dumps(name) + separators[1] + said + separators[0] + text[1:]
    return text.encode("utf-8", "surrogatepass")


def _full(raw: bytes) -> events.Event | str:
    try:
        return events._parse_fully(raw)  # noqa: SLF001 - the two private parse paths are what this test compares
    except events.InvalidEvent as exc:
        return "invalid: " + exc.reason


@settings(max_examples=1500)
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
    if len(raw) > events.MAX_BODY_BYTES:  # refused before either path reads it
        assert parsed == f"invalid: body is {len(raw)} bytes, over the limit of {events.MAX_BODY_BYTES}"
    else:
        assert parsed == _full(raw)


_RESULT = {"rows": 1200, "file": "s3://bucket/export-2021-02-18.csv", "ok": True, "ratio": 0.25}


@pytest.mark.parametrize(
    "raw",
    [
        body(),
        body(message=None),
        body(seq=...),
        body(message=..., extra="x"),
        body(extra={"nested": [1, {"deeper": "yes"}]}),
        body(progress=50),
        body(progress=12.5, message=None),
        body(type="succeeded", progress=100, result=_RESULT),
        body(type="succeeded", result=[1, "two", None, 3.5]),
        body(type="failed", error={"code": "disk_full", "details": {"free_bytes": 0, "path": "/var"}}),
        body(type="failed", error={"code": "lost"}),
        body(type="cancel_requested", message="Cancellation requested by admin."),
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
        body(extra={"nested": 1})[:-1] + b', "extra2": {"k": 1, "k": 2}}',  # a repeated key at depth
        body(job_id=2**64),  # orjson reads this as a float
        body(type="succeeded", result={"big": 2**64}),  # and this too, where the full parse refuses it
        body(type="succeeded", result={"count": 1e20}),  # a double written with e+: the full parse decides
        body(type="progress", result={"rows": 1}),  # a result on the wrong type
        body(type="succeeded", error={"code": "lost"}),
        body(progress=True),
        body(occurred_at="2021-02-18"),
    ],
)
def test_other_bodies_are_left_to_the_full_parse(raw):
    assert events._parse_plain(raw) is None  # noqa: SLF001 - the two private parse paths are what this test compares


# ---- SPEC §11: progress, result, error, cancel_requested


def test_the_new_fields_parse_as_they_are_kept():
    event = events.parse(body(type="succeeded", progress=100, result={"rows": 3, "name": "é"}))
    assert (event.progress, event.result_json) == (100.0, '{"rows":3,"name":"é"}')
    failed = events.parse(body(type="failed", error={"code": "disk.full-2", "details": [1, {"a": None}], "x": 1}))
    assert (failed.error_code, failed.error_details_json) == ("disk.full-2", '[1,{"a":null}]')
    assert events.parse(body(type="failed", error={"code": "lost"})).error_details_json is None
    assert events.parse(body(type="cancel_requested")).type == "cancel_requested"
    assert not events.parse(body(type="cancel_requested")).terminal


def test_a_null_result_or_details_is_none_and_may_be_on_any_type():
    assert events.parse(body(result=None)).result_json is None
    assert events.parse(body(type="succeeded", result=None)).result_json is None
    assert events.parse(body(type="failed", error={"code": "x", "details": None})).error_details_json is None


def test_progress_is_a_float_and_minus_zero_is_zero():
    assert events.parse(body(progress=0)).progress == 0.0
    assert type(events.parse(body(progress=7)).progress) is float
    assert str(events.parse(body(progress=-0.0)).progress) == "0.0"
    assert events.parse(body(progress=100)).progress == 100.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (body(progress=-0.01), "progress: must be a number from 0 to 100"),
        (body(progress=100.5), "progress: must be a number from 0 to 100"),
        (body(progress=None), "progress: must be a number from 0 to 100"),
        (body(progress=True), "progress: must be a number from 0 to 100"),
        (body(progress="50"), "progress: must be a number from 0 to 100"),
        (body(result={"rows": 1}), "result: only a succeeded event carries one"),
        (body(type="failed", result=1), "result: only a succeeded event carries one"),
        (body(type="succeeded", result="x" * 16383), "result: must be at most 16384 bytes as compact JSON, not 16385"),
        (body(type="succeeded", result={"n": 2**64}), "result: cannot be kept as JSON (Integer exceeds 64-bit range)"),
        (body(error={"code": "lost"}), "error: only a failed event carries one"),
        (body(type="failed", error="lost"), 'error: must be an object {"code", "details"?}'),
        (body(type="failed", error=None), 'error: must be an object {"code", "details"?}'),
        (body(type="failed", error={}), "error: code must be 1 to 64 characters of a-z 0-9 _ . -"),
        (body(type="failed", error={"code": "Lost"}), "error: code must be 1 to 64 characters"),
        (body(type="failed", error={"code": ""}), "error: code must be 1 to 64 characters"),
        (body(type="failed", error={"code": "x" * 65}), "error: code must be 1 to 64 characters"),
        (body(type="failed", error={"code": "a b"}), "error: code must be 1 to 64 characters"),
        (body(type="failed", error={"code": 7}), "error: code must be 1 to 64 characters"),
        (
            body(type="failed", error={"code": "x", "details": "é" * 8192}),
            "error: details must be at most 16384 bytes as compact JSON, not 16386",
        ),
        (body(type="cancelled"), "type: must be one of progress, succeeded, failed, cancel_requested"),
        (b'{"job_id": 1e400}', "body holds the number 1e400, out of range"),
        (
            b'{"extra": ' + b"9" * 5000 + b"}",
            "body holds the number 99999999999999999999… (5000 characters), out of range",
        ),
    ],
)
def test_each_broken_rule_of_section_11_has_a_reason_naming_the_field(raw, expected):
    assert expected in reason_for(raw)


def test_sixteen_kib_is_counted_in_bytes_of_compact_json():
    # 16384 bytes: the two quotes and 8191 two-byte characters; one ASCII character more is over.
    at_limit = "é" * 8191
    assert len(json.dumps(at_limit, ensure_ascii=False).encode()) == events.MAX_JSON_BYTES
    event = events.parse(body(type="succeeded", result=at_limit))
    assert len(event.result_json.encode()) == events.MAX_JSON_BYTES
    assert "16385" in reason_for(body(type="succeeded", result=at_limit + "a"))
    # whitespace in the body is not counted: the same value written loosely is measured compactly
    spaced = json.dumps({**GOOD, "type": "succeeded", "result": {"k": at_limit[:-3]}}, indent=8).encode()
    assert len(events.parse(spaced).result_json.encode()) == events.MAX_JSON_BYTES
    # non-ASCII written as \u escapes in the body counts as the characters themselves
    escaped = json.dumps({**GOOD, "type": "succeeded", "result": at_limit}, ensure_ascii=True).encode()
    assert events.parse(escaped).result_json == event.result_json


def test_new_event_states_the_same_rules():
    event = events.new_event(3, "failed", "boom", error_code="disk_full", error_details={"free": 0}, progress=40)
    assert events.parse(json.dumps(event.to_wire()).encode()) == event
    assert event.to_wire()["error"] == {"code": "disk_full", "details": {"free": 0}}
    with pytest.raises(events.InvalidEvent, match="details go only with a code"):
        events.new_event(3, "failed", error_details={"free": 0})
    with pytest.raises(events.InvalidEvent, match="result: only a succeeded event"):
        events.new_event(3, "progress", result=1)
    plain = events.new_event(3, "progress", "working")
    assert set(plain.to_wire()) == {"event_id", "job_id", "type", "occurred_at", "message", "seq"}


def test_the_wire_schema_states_the_new_fields():
    schema = events.wire_schema()
    assert schema["properties"]["progress"] == {
        "type": "number",
        "minimum": 0,
        "maximum": 100,
        "default": None,
        "title": "Progress",
    }
    assert "cancel_requested" in schema["properties"]["type"]["enum"]
    assert schema["properties"]["error"]["$ref"] == "#/$defs/JobError"
    assert schema["$defs"]["JobError"]["required"] == ["code"]
    assert schema["$defs"]["JobError"]["properties"]["code"]["pattern"] == "^[a-z0-9_.-]{1,64}$"
