"""Dead-letter reasons (``x-tracker-reason``) as short codes: bounded metric labels and filters."""

from __future__ import annotations

import re

# Every code ``reason_code`` gives; a metric label takes no other value.
CODES = (
    "invalid_content_type",
    "too_large",
    "invalid_utf8",
    "invalid_json",
    "invalid_event",
    "unknown_job",
    "refused",
    "other",
)

# The texts of tracker.events.parse, consumers.status and consumers.amqp (which may cut a long
# reason short, never its start). Tried in order; the first match decides.
_RULES = (
    (re.compile(r"content_type must be "), "invalid_content_type"),
    (re.compile(r"body is \d+ bytes, over the limit"), "too_large"),
    (re.compile(r"body is not valid UTF-8"), "invalid_utf8"),
    # A repeated key or NaN: JSON no two parsers read the same way, so not JSON to us.
    (re.compile(r"body (is not valid JSON|repeats the key|holds \w+, which is not JSON)"), "invalid_json"),
    (re.compile(r"job \d+ does not exist$"), "unknown_job"),
    (re.compile(r"database refused the event"), "refused"),
    # "body must be a JSON object, not …", and pydantic's "<field>: <rule>; …" per broken rule.
    (re.compile(r"body must be a JSON object|[A-Za-z_][\w.]*: "), "invalid_event"),
)


def reason_code(reason: str) -> str:
    """The short code of a dead-letter reason: one of ``CODES``, ``other`` for a text we never write."""
    for pattern, code in _RULES:
        if pattern.match(reason):
            return code
    return "other"
