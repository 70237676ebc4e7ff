"""How every tracker process logs: plain text, or one JSON object per line (``TRACKER_LOG_FORMAT``)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Final

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


def configure(level: str, log_format: str) -> None:
    """Send the root logger's records to stderr at ``level``, as text or JSON.

    Like ``logging.basicConfig``, does nothing if the root logger has handlers already. Raises
    ValueError for an unknown level or format.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # alembic announces each plugin it sets up, at INFO, every time it is first used in a process.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
