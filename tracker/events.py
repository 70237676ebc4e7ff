"""The event wire format (SPEC §3): pydantic models and a strict parser with specific reasons."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Annotated, Any, Literal

import pydantic

from tracker import timefmt

MAX_BODY_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 4096
MAX_JOB_ID = 2**63 - 1
CONTENT_TYPE = "application/json"

EventType = Literal["progress", "succeeded", "failed"]
TERMINAL_TYPES = frozenset({"succeeded", "failed"})

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII)


class InvalidEvent(ValueError):
    """A message that breaks the wire contract; ``reason`` says how, for ``x-tracker-reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


class Event(pydantic.BaseModel):
    """One job lifecycle event, as published by a worker. Times are aware and in UTC."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore", strict=True)

    event_id: Annotated[str, pydantic.BeforeValidator(_event_id)]
    job_id: Annotated[int, pydantic.Field(ge=1, le=MAX_JOB_ID)]
    type: EventType
    occurred_at: Annotated[dt.datetime, pydantic.BeforeValidator(_occurred_at)]
    message: Annotated[str | None, pydantic.BeforeValidator(check_message)] = None
    seq: Annotated[int, pydantic.Field(ge=0, le=MAX_JOB_ID)] = 0

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
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != CONTENT_TYPE:
        raise InvalidEvent(f"content_type must be {CONTENT_TYPE}, not {content_type!r}")
    if len(body) > MAX_BODY_BYTES:
        raise InvalidEvent(f"body is {len(body)} bytes, over the limit of {MAX_BODY_BYTES}")
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
        return Event.model_validate(document)
    except pydantic.ValidationError as exc:
        raise InvalidEvent(_reason(exc)) from None


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
