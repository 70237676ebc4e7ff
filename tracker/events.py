"""The event wire format (SPEC §3): pydantic models and a strict parser with specific reasons."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import typing
import uuid
from typing import Annotated, Any, Literal

import orjson
import pydantic
from pydantic.json_schema import SkipJsonSchema

from tracker import timefmt
from tracker.errors import InvalidEvent

MAX_BODY_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 4096
MAX_JOB_ID = 2**63 - 1
MAX_JSON_BYTES = 16 * 1024  # a result, or an error's details, as compact JSON text (``json_text``)
MAX_ERROR_CODE_CHARS = 64
CONTENT_TYPE = "application/json"

EventType = Literal["progress", "succeeded", "failed", "cancel_requested"]
TERMINAL_TYPES = frozenset({"succeeded", "failed"})
CANCEL_REQUESTED = "cancel_requested"
_TYPES = frozenset(typing.get_args(EventType))

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII)
ERROR_CODE_PATTERN = rf"[a-z0-9_.-]{{1,{MAX_ERROR_CODE_CHARS}}}"
_ERROR_CODE = re.compile(ERROR_CODE_PATTERN, re.ASCII)


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


def check_progress(value: Any) -> float:
    """A ``progress`` as the contract allows it: a JSON number from 0 to 100 (not a boolean, not
    null), as a float (``-0.0`` as ``0.0``); raises ValueError."""
    if (type(value) is not int and type(value) is not float) or not 0 <= value <= 100:
        raise ValueError("must be a number from 0 to 100")
    return float(value) + 0.0


def check_error_code(value: Any) -> str:
    """An ``error.code``: 1 to 64 characters of ``a-z 0-9 _ . -``; raises ValueError."""
    if type(value) is not str or _ERROR_CODE.fullmatch(value) is None:
        raise ValueError(f"code must be 1 to {MAX_ERROR_CODE_CHARS} characters of a-z 0-9 _ . -")
    return value


def json_text(value: Any) -> str | None:
    """``value`` (a ``result``, an error's ``details``) as the compact JSON text it is kept and
    measured as; None for null, which is no value. Raises ValueError beyond MAX_JSON_BYTES.

    "At most 16 KiB as JSON text" (SPEC §11) is measured here: the UTF-8 bytes of the value
    written with no whitespace between tokens, non-ASCII characters as themselves (not as
    ``\\u`` escapes), numbers as the shortest text that reads back as the same double (integers
    in full), keys in the order given. Values JSON can carry but this text cannot are refused
    too: integers beyond 64 bits, lone surrogates, nesting deeper than 254 levels.
    """
    if value is None:
        return None
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"cannot be kept as JSON ({exc})") from None
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"must be at most {MAX_JSON_BYTES} bytes as compact JSON, not {len(text)}")
    return text.decode()


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One job lifecycle event, as published by a worker, once validated. Times are aware and in UTC.

    Made only by ``parse`` and ``new_event``, which hold it to the wire contract (``_Wire``).
    ``result_json`` and ``error_details_json`` are compact JSON text (``json_text``); a result
    only on ``succeeded``, an error only on ``failed``, details only with a code.
    """

    event_id: str  # lowercase
    job_id: int
    type: str  # one of EventType
    occurred_at: dt.datetime
    message: str | None = None
    seq: int = 0
    progress: float | None = None
    result_json: str | None = None
    error_code: str | None = None
    error_details_json: str | None = None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def to_wire(self) -> dict[str, Any]:
        """The JSON object a publisher sends for this event (SPEC §11's fields only when set)."""
        wire: dict[str, Any] = {
            "event_id": self.event_id,
            "job_id": self.job_id,
            "type": self.type,
            "occurred_at": timefmt.format_time(self.occurred_at),
            "message": self.message,
            "seq": self.seq,
        }
        if self.progress is not None:
            wire["progress"] = self.progress
        if self.result_json is not None:
            wire["result"] = orjson.loads(self.result_json)
        if self.error_code is not None:
            wire["error"] = {"code": self.error_code}
            if self.error_details_json is not None:
                wire["error"]["details"] = orjson.loads(self.error_details_json)
        return wire


class JobError(pydantic.BaseModel):
    """Why a job failed, for machines: the ``error`` of a ``failed`` event (SPEC §11)."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore", strict=True)

    code: Annotated[str, pydantic.Field(pattern=f"^{ERROR_CODE_PATTERN}$")]
    # compact JSON text once validated (json_text); any JSON value on the wire
    details: Annotated[
        str | SkipJsonSchema[None],
        pydantic.WithJsonSchema({"description": f"Any JSON value, at most {MAX_JSON_BYTES} bytes as compact JSON"}),
    ] = None


def _job_error(value: Any) -> JobError:
    """The ``error`` field, checked here whole so that a reason names it once: ``error: code must be …``."""
    if type(value) is not dict:
        raise ValueError('must be an object {"code", "details"?}')
    details = value.get("details")
    try:
        details_json = json_text(details)
    except ValueError as exc:
        raise ValueError(f"details {exc}") from None
    return JobError(code=check_error_code(value.get("code")), details=details_json)


class _Wire(pydantic.BaseModel):
    """The wire contract (SPEC §3) as pydantic states it: what makes a body an Event, and why not."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore", strict=True)

    event_id: Annotated[str, pydantic.BeforeValidator(_event_id)]
    job_id: Annotated[int, pydantic.Field(ge=1, le=MAX_JOB_ID)]
    type: EventType
    occurred_at: Annotated[dt.datetime, pydantic.BeforeValidator(_occurred_at)]
    message: Annotated[str | None, pydantic.BeforeValidator(check_message)] = None
    seq: Annotated[int, pydantic.Field(ge=0, le=MAX_JOB_ID)] = 0
    progress: Annotated[
        float | SkipJsonSchema[None],
        pydantic.BeforeValidator(check_progress),
        pydantic.WithJsonSchema({"type": "number", "minimum": 0, "maximum": 100}),
    ] = None
    # compact JSON text once validated (json_text); any JSON value on the wire, null being none
    result: Annotated[
        str | SkipJsonSchema[None],
        pydantic.BeforeValidator(json_text),
        pydantic.WithJsonSchema(
            {"description": f"On succeeded only: any JSON value, at most {MAX_JSON_BYTES} bytes as compact JSON"}
        ),
    ] = None
    error: Annotated[JobError | SkipJsonSchema[None], pydantic.BeforeValidator(_job_error)] = None

    @pydantic.field_validator("result")
    @classmethod
    def _result_on_succeeded_only(cls, value: str | None, info: pydantic.ValidationInfo) -> str | None:
        if value is not None and info.data.get("type", "succeeded") != "succeeded":
            raise ValueError("only a succeeded event carries one")
        return value

    @pydantic.field_validator("error")
    @classmethod
    def _error_on_failed_only(cls, value: JobError | None, info: pydantic.ValidationInfo) -> JobError | None:
        if value is not None and info.data.get("type", "failed") != "failed":
            raise ValueError("only a failed event carries one")
        return value


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
    progress: float | None = None,
    result: Any = None,
    error_code: str | None = None,
    error_details: Any = None,
) -> Event:
    """Build a valid event (what publishers use); raises InvalidEvent like ``parse`` would.

    ``result`` and ``error_details`` are JSON values (None: none); ``error_details`` goes only
    with an ``error_code``.
    """
    fields: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()),
        "job_id": job_id,
        "type": type,
        "occurred_at": timefmt.format_time(occurred_at or timefmt.now()),
        "message": message,
        "seq": seq,
    }
    if progress is not None:
        fields["progress"] = progress
    if result is not None:
        fields["result"] = result
    if error_code is not None:
        fields["error"] = {"code": error_code, "details": error_details}
    elif error_details is not None:
        raise InvalidEvent("error: details go only with a code")
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
    no backslash (so every ``"`` opens or closes a key or a string, at any depth), valid JSON to
    orjson (which refuses NaN, numbers beyond a double and invalid UTF-8 as the full parse does),
    an object that orjson writes back with as many ``"`` as the body has (a repeated key, at any
    depth, would have been dropped, and its quotes with it), and fields that pass the checks
    below, which are those of ``_Wire`` in strict mode. tests/unit/test_events.py holds the two
    parses to the same answer for generated bodies.
    """
    if b"\\" in body:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(document) is not dict:
        return None
    try:
        written = orjson.dumps(document)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: the full parse decides
        return None
    if written.count(b'"') != body.count(b'"'):
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
    progress = result = error_code = details = None
    if "progress" in document:
        progress = document["progress"]
        if (type(progress) is not int and type(progress) is not float) or not 0 <= progress <= 100:
            return None
        progress = float(progress) + 0.0
    if document.get("result") is not None and (
        kind != "succeeded" or (result := _plain_json_text(document["result"])) is None
    ):
        return None
    if "error" in document:
        error = document["error"]
        if type(error) is not dict or kind != "failed":
            return None
        error_code = error.get("code")
        if type(error_code) is not str or _ERROR_CODE.fullmatch(error_code) is None:
            return None
        if error.get("details") is not None and (details := _plain_json_text(error["details"])) is None:
            return None
    try:
        instant = timefmt.parse_time(occurred_at)
    except ValueError:
        return None
    return Event(event_id.lower(), job_id, kind, instant, message, seq, progress, result, error_code, details)


def _plain_json_text(value: Any) -> str | None:
    """``json_text(value)`` for a value orjson read, or None when the full parse must decide.

    orjson reads an integer beyond 64 bits as a double where the full parse keeps the integer
    (which ``json_text`` refuses); any such double, being at least 2**63, is written with an
    exponent (``e+``), so a text holding one is left to the full parse (a string holding ``e+``
    too: rare, and only slower).
    """
    text = orjson.dumps(value)
    if len(text) > MAX_JSON_BYTES or b"e+" in text:
        return None
    return text.decode()


def _parse_fully(body: bytes) -> Event:
    """Any body: the Event, or InvalidEvent with the first thing wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        document = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_integer,
            object_pairs_hook=_unique_keys,
        )
    except _DuplicateKey as exc:
        raise InvalidEvent(f"body repeats the key {exc.args[0]!r}") from None
    except _NonFiniteNumber as exc:
        raise InvalidEvent(f"body holds {exc.args[0]}, which is not JSON") from None
    except _NumberOutOfRange as exc:
        raise InvalidEvent(f"body holds the number {exc.args[0]}, out of range") from None
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
    error = wire.error
    return Event(
        wire.event_id,
        wire.job_id,
        wire.type,
        wire.occurred_at,
        wire.message,
        wire.seq,
        wire.progress,
        wire.result,
        None if error is None else error.code,
        None if error is None else error.details,
    )


def _reason(exc: pydantic.ValidationError) -> str:
    """One readable line per broken rule, the field first: ``job_id: must be at least 1``."""
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error["loc"]) or "body"
        kind = error["type"]
        if kind == "missing":
            text = "is required"
        elif kind == "literal_error":
            text = "must be one of " + ", ".join(typing.get_args(EventType))
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


class _NumberOutOfRange(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFiniteNumber(name)


def _finite_float(text: str) -> float:
    # A number beyond a double reads as infinity, which no JSON text can say (orjson refuses it).
    value = float(text)
    if math.isinf(value):
        raise _NumberOutOfRange(_shortened(text))
    return value


def _integer(text: str) -> int:
    # Python refuses to read integers of more than 4,300 digits (a ValueError of its own).
    try:
        return int(text)
    except ValueError:
        raise _NumberOutOfRange(_shortened(text)) from None


def _shortened(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:20]}… ({len(text)} characters)"


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
