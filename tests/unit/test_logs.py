"""TRACKER_LOG_FORMAT: the setting, and the JSON formatter's lines."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from tracker.config import ConfigError, Settings
from tracker.logs import JsonFormatter, configure, formatter, printable


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


FORGED = "2026-01-01 00:00:00,000 ERROR consumers.amqp[1]: forged"


def test_a_text_line_escapes_control_characters_so_no_message_can_forge_a_line():
    # A message_id from the broker, logged as the consumer logs a dead letter.
    hostile = f"m1\n{FORGED}\x1b[2J\r\x00\x7f\x85\u2028\u202e"
    line = formatter("text").format(record("dead-lettered delivery %s (message_id %s)", 7, hostile))
    assert line.isprintable(), line
    assert line.endswith(r"message_id m1\n" + FORGED + r"\x1b[2J\r\x00\x7f\x85\u2028\u202e)")
    assert " WARNING tracker.test[" in line
    assert "é ok" in formatter("text").format(record("é ok"))  # printable text is left as it is


def test_a_traceback_in_a_text_line_keeps_its_lines_indented_so_none_can_pass_for_a_record():
    try:
        raise ValueError(f"bad message_id\n{FORGED}\x1b[31m")
    except ValueError:
        text = formatter("text").format(record("failed", exc_info=sys.exc_info()))
    first, *rest = text.split("\n")
    assert first.endswith(": failed") and rest
    assert all(line.isprintable() and line.startswith("  ") for line in rest), rest
    assert any(line.strip() == "Traceback (most recent call last):" for line in rest)
    assert any(line.strip() == FORGED + r"\x1b[31m" for line in rest)


def test_printable_escapes_only_what_a_terminal_would_act_on():
    assert printable("plain text, é, 日本") == "plain text, é, 日本"
    assert printable("a\tb\nc\x1b[0m") == r"a\tb\nc\x1b[0m"
    assert printable("back\\slash") == "back\\slash"
