"""TRACKER_LOG_FORMAT: the setting, and the JSON formatter's lines."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from tracker.config import ConfigError, Settings
from tracker.logs import JsonFormatter, configure


def record(message: str, *args: object, exc_info: object = None, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("tracker.test")
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, args, exc_info, extra=extra)


def test_the_log_format_is_a_setting_text_by_default():
    assert Settings.from_env({}).log_format == "text"
    settings = Settings.from_env({"TRACKER_LOG_FORMAT": "json"})
    assert settings.log_format == "json"
    assert Settings.from_env(settings.to_env()) == settings
    with pytest.raises(ConfigError, match="TRACKER_LOG_FORMAT must be text or json, not 'xml'"):
        Settings.from_env({"TRACKER_LOG_FORMAT": "xml"})


def test_a_record_is_one_line_of_json_with_the_fields_of_the_spec():
    line = JsonFormatter().format(record("dead-lettered %s:\n%s", "one", "two \u00e9\udcff"))
    assert "\n" not in line and line.isascii()
    entry = json.loads(line)
    assert entry["message"] == "dead-lettered one:\ntwo \u00e9\udcff"
    assert (entry["level"], entry["logger"]) == ("WARNING", "tracker.test")
    assert entry["time"].endswith("Z") and len(entry["time"]) == len("2026-01-01T00:00:00.000000Z")
    assert "job_id" not in entry and "event_id" not in entry and "exception" not in entry


def test_job_id_and_event_id_are_fields_of_their_own_when_given():
    entry = json.loads(JsonFormatter().format(record("applied", job_id=42, event_id="0b5e")))
    assert (entry["job_id"], entry["event_id"]) == (42, "0b5e")


def test_an_exception_is_a_field():
    try:
        raise RuntimeError("broken")
    except RuntimeError:
        entry = json.loads(JsonFormatter().format(record("failed", exc_info=sys.exc_info())))
    assert entry["message"] == "failed"
    assert entry["exception"].startswith("Traceback") and "RuntimeError: broken" in entry["exception"]


def test_configure_refuses_an_unknown_format():
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        configure("INFO", "yaml")
