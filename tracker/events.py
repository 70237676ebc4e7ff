"""The event wire format (SPEC §3): pydantic models and a strict parser with specific reasons."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import typing
import uuid
from typing import Annotated, Any, Literal

import orjson
import pydantic

from tracker import timefmt
from tracker.errors import InvalidEvent

MAX_BODY_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 4096
MAX_JOB_ID = 2**63 - 1
CONTENT_TYPE = "application/json"

EventType = Literal["progress", "succeeded", "failed"]
TERMINAL_TYPES = frozenset({"succeeded", "failed"})
_TYPES = frozenset(typing.get_args(EventType))

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII)


def _event_id(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a UUID string")
    if _UUID.fullmatch(value) is None:
        raise ValueError("must be a UUID in the 8-4-4-4-12 hex form")
    return value.lower()


def _occurred_at(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string")
    return timefmt.parse_time(value)


def check_message(value: Any) -> str | None:
    """A status message as the contract allows it (string ≤ 4096 characters, or None); raises ValueError."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string or null")
    if len(value) > MAX_MESSAGE_CHARS:
        raise ValueError(f"must be at most {MAX_MESSAGE_CHARS} characters, not {len(value)}")
    # PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded: both would make a
    # message that no database accepts, so they are bad input here rather than a poison later.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One job lifecycle event, as published by a worker, once validated. Times are aware and in UTC.

    Made only by ``parse`` and ``new_event``, which hold it to the wire contract (``_Wire``).
    """

    event_id: str  # lowercase
    job_id: int
    type: str  # one of EventType
    occurred_at: dt.datetime
    message: str | None = None
    seq: int = 0

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def to_wire(self) -> dict[str, Any]:
        """The JSON object a publisher sends for this event."""
        return {
            "event_id": self.event_id,
            "job_id": self.job_id,
            "type": self.type,
            "occurred_at": timefmt.format_time(self.occurred_at),
            "message": self.message,
            "seq": self.seq,
        }


class _Wire(pydantic.BaseModel):
    """The wire contract (SPEC §3) as pydantic states it: what makes a body an Event, and why not."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore", strict=True)

    event_id: Annotated[str, pydantic.BeforeValidator(_event_id)]
    job_id: Annotated[int, pydantic.Field(ge=1, le=MAX_JOB_ID)]
    type: EventType
    occurred_at: Annotated[dt.datetime, pydantic.BeforeValidator(_occurred_at)]
    message: Annotated[str | None, pydantic.BeforeValidator(check_message)] = None
    seq: Annotated[int, pydantic.Field(ge=0, le=MAX_JOB_ID)] = 0


def wire_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON Schema of an event body as the wire model states it (the API's document derives
    its timeline entries from it). Nested models are under ``$defs``, referred to by
    ``ref_template`` (``{model}``: the model's name)."""
    return _Wire.model_json_schema(ref_template=ref_template)


def new_event(
    job_id: int,
    type: str,
    message: str | None = None,
    *,
    seq: int = 0,
    occurred_at: dt.datetime | None = None,
    event_id: str | None = None,
) -> Event:
    """Build a valid event (what publishers use); raises InvalidEvent like ``parse`` would."""
    fields = {
        "event_id": event_id or str(uuid.uuid4()),
        "job_id": job_id,
        "type": type,
        "occurred_at": timefmt.format_time(occurred_at or timefmt.now()),
        "message": message,
        "seq": seq,
    }
    return _validate(fields)


def parse(body: bytes, content_type: str | None = CONTENT_TYPE) -> Event:
    """Turn one message body into an Event, or raise InvalidEvent saying exactly what is wrong."""
    if content_type != CONTENT_TYPE:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media != CONTENT_TYPE:
            raise InvalidEvent(f"content_type must be {CONTENT_TYPE}, not {content_type!r}")
    if len(body) > MAX_BODY_BYTES:
        raise InvalidEvent(f"body is {len(body)} bytes, over the limit of {MAX_BODY_BYTES}")
    return _parse_plain(body) or _parse_fully(body)


def _parse_plain(body: bytes) -> Event | None:
    """The common body, taken exactly as ``_parse_fully`` would take it, without pydantic; or None.

    None means "not plainly valid": ``_parse_fully`` then decides, and gives the reason. Plain means:
    no backslash (so every ``"`` opens or closes a string), valid JSON to orjson (which refuses
    NaN and invalid UTF-8 as the full parse does), one flat object with as many keys and string
    values as the body has quoted strings (so no key is repeated), and fields that pass the checks below,
    which are those of ``_Wire`` in strict mode. tests/unit/test_events.py holds the two parses to
    the same answer for generated bodies.
    """
    if b"\\" in body:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(document) is not dict:
        return None
    # Each key and each string value is two quotes in the body; a repeated key would be more.
    quotes = 2 * len(document)
    for value in document.values():
        if type(value) is str:
            quotes += 2
        elif type(value) is dict or type(value) is list:
            return None
    if body.count(b'"') != quotes:
        return None
    event_id, job_id, kind = document.get("event_id"), document.get("job_id"), document.get("type")
    occurred_at, message, seq = document.get("occurred_at"), document.get("message"), document.get("seq", 0)
    if (
        type(event_id) is not str
        or _UUID.fullmatch(event_id) is None
        or type(job_id) is not int
        or not 1 <= job_id <= MAX_JOB_ID
        or type(kind) is not str
        or kind not in _TYPES
        or type(occurred_at) is not str
        or (message is not None and (type(message) is not str or len(message) > MAX_MESSAGE_CHARS or "\x00" in message))
        or type(seq) is not int
        or not 0 <= seq <= MAX_JOB_ID
    ):
        return None
    try:
        instant = timefmt.parse_time(occurred_at)
    except ValueError:
        return None
    return Event(event_id.lower(), job_id, kind, instant, message, seq)


def _parse_fully(body: bytes) -> Event:
    """Any body: the Event, or InvalidEvent with the first thing wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        document = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise InvalidEvent(f"body repeats the key {exc.args[0]!r}") from None
    except _NonFiniteNumber as exc:
        raise InvalidEvent(f"body holds {exc.args[0]}, which is not JSON") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise InvalidEvent(f"body is not valid JSON: {detail}") from None
    if not isinstance(document, dict):
        raise InvalidEvent(f"body must be a JSON object, not {_json_kind(document)}")
    return _validate(document)


def _validate(document: dict[str, Any]) -> Event:
    try:
        wire = _Wire.model_validate(document)
    except pydantic.ValidationError as exc:
        raise InvalidEvent(_reason(exc)) from None
    return Event(wire.event_id, wire.job_id, wire.type, wire.occurred_at, wire.message, wire.seq)


def _reason(exc: pydantic.ValidationError) -> str:
    """One readable line per broken rule, the field first: ``job_id: must be at least 1``."""
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error["loc"]) or "body"
        kind = error["type"]
        if kind == "missing":
            text = "is required"
        elif kind == "literal_error":
            text = "must be one of progress, succeeded, failed"
        elif kind in ("int_type", "int_parsing"):
            text = "must be an integer"
        elif kind == "greater_than_equal":
            text = f"must be at least {error['ctx']['ge']}"
        elif kind == "less_than_equal":
            text = f"must be at most {error['ctx']['le']}"
        elif kind == "value_error":
            text = str(error["ctx"]["error"])
        else:
            text = error["msg"]
        parts.append(f"{field}: {text}")
    return "; ".join(parts)


class _DuplicateKey(ValueError):
    pass


class _NonFiniteNumber(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFiniteNumber(name)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _DuplicateKey(key)
        document[key] = value
    return document


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"
