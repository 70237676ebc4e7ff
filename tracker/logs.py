"""How every tracker process logs: plain text, or one JSON object per line (``TRACKER_LOG_FORMAT``)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Final

from tracker import timefmt

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
FORMATS: Final = ("text", "json")

# Set with ``log.info(..., extra={"job_id": 42})``; written as fields of their own when present.
CONTEXT_FIELDS: Final = ("job_id", "event_id", "reason_code")


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: time, level, logger, message, pid, then the context fields
    (job_id, event_id, reason_code) and the exception's traceback where the record has them.

    The line is pure ASCII (everything else escaped), so no message can break it or the stream.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": timefmt.format_time(dt.datetime.fromtimestamp(record.created, dt.UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on (control, format and separator
    characters: newline, carriage return, ESC, NUL, U+2028, bidi overrides …) written as its
    Python escape (``\\n``, ``\\x1b``, ``\\u2028``); the rest, non-ASCII letters included, as it is.

    For whatever a line shows that came from outside (a message_id, a routing key): it cannot
    end the line, forge another, or send a terminal an escape sequence.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class TextFormatter(logging.Formatter):
    """A record as one line of text (TEXT_FORMAT), its control characters escaped (``printable``),
    so that a newline in a message_id cannot forge a record; a traceback follows on lines of its
    own, each escaped and indented, so every line that starts at its first column starts a record.
    """

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("  " + printable(line) for line in text.split("\n"))


def formatter(log_format: str) -> logging.Formatter:
    """How ``log_format`` (``text`` or ``json``) writes a record; raises ValueError for another."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(level: str, log_format: str) -> None:
    """Send the root logger's records to stderr at ``level``, as text or JSON.

    Like ``logging.basicConfig``, does nothing if the root logger has handlers already. Raises
    ValueError for an unknown level or format.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # alembic announces each plugin it sets up, at INFO, every time it is first used in a process.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
