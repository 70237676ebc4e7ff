"""Dead-letter reasons as short codes (SPEC §8): ``job 5 does not exist`` is ``unknown_job``.

The reason text (the ``x-tracker-reason`` header) says exactly what was wrong and may quote the
input; the code says which kind of wrong it was, from a small fixed set, so that it can be a
metric label and what an operator types after ``tracker dead replay --reason``. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Final

# Each code, what it covers, and the reason texts (tracker/events.py, consumers/status.py) it is for.
CODES: Final[dict[str, str]] = {
    "invalid_content_type": "content_type is not application/json",
    "too_large": "body over 64 KiB",
    "invalid_utf8": "body is not valid UTF-8",
    "invalid_json": "body is not JSON (including NaN and Infinity)",
    "duplicate_key": "body repeats a JSON key",
    "not_an_object": "body is JSON but not an object",
    "too_large_value": "a result or an error's details over 16 KiB as JSON",
    "invalid_field": "a field breaks the event table (missing, wrong type, out of range)",
    "unknown_job": "the event names a job with no row",
    "database_refused": "the database refused an event that passed validation",
    "broker_rejected": "dead-lettered by RabbitMQ: rejected without requeue",
    "broker_expired": "dead-lettered by RabbitMQ: its TTL expired",
    "broker_maxlen": "dead-lettered by RabbitMQ: the queue was over its length limit",
    "broker_delivery_limit": "dead-lettered by RabbitMQ: redelivered too often",
    "no_reason": "no x-tracker-reason header and no RabbitMQ reason",
    "other": "a reason none of the above describes",
}

NO_REASON: Final = "(no x-tracker-reason header)"
BROKER_PREFIX: Final = "(dead-lettered by RabbitMQ: "

# First match wins; the texts are the ones tracker.events and consumers.status produce.
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"content_type must be "), "invalid_content_type"),
    (re.compile(r"body is \d+ bytes, over the limit"), "too_large"),
    (re.compile(r"body is not valid UTF-8"), "invalid_utf8"),
    (
        re.compile(r"body is not valid JSON|body holds .*, which is not JSON|body holds the number .*, out of range"),
        "invalid_json",
    ),
    (re.compile(r"body repeats the key "), "duplicate_key"),
    (re.compile(r"body must be a JSON object"), "not_an_object"),
    (re.compile(r"job \d+ does not exist$"), "unknown_job"),
    (re.compile(r"database refused the event"), "database_refused"),
    (re.compile(r"(result|error): (details )?must be at most \d+ bytes as compact JSON"), "too_large_value"),
    # pydantic's field errors: "job_id: must be at least 1; type: is required"
    (re.compile(r"[A-Za-z_][\w.]*: "), "invalid_field"),
)

_CODE_LIKE: Final = re.compile(r"[a-z][a-z0-9_]*")


def reason_code(reason: str) -> str:
    """The short code (a key of ``CODES``) for a dead letter's reason text; never raises."""
    if reason == NO_REASON:
        return "no_reason"
    if reason.startswith(BROKER_PREFIX):
        code = "broker_" + reason[len(BROKER_PREFIX) :].rstrip(")")
        return code if code in CODES else "other"
    for pattern, code in _PATTERNS:
        if pattern.match(reason):
            return code
    return "other"


def broker_reason(first_death_reason: str) -> str:
    """The reason text for a message RabbitMQ dead-lettered itself (``x-first-death-reason``)."""
    return f"{BROKER_PREFIX}{first_death_reason})"


class ReasonFilter:
    """Which dead letters a ``--reason`` names: a short code, or else one exact reason text.

    ``unknown_job`` matches every reason whose code is ``unknown_job``; ``job 5 does not exist``
    matches that text only. None matches everything.
    """

    def __init__(self, selector: str | None) -> None:
        """Raises ValueError for a word that looks like a code but is none (a typo, most likely)."""
        if selector is not None and selector not in CODES and _CODE_LIKE.fullmatch(selector):
            raise ValueError(f"unknown reason code {selector!r}; the codes are: {', '.join(CODES)}")
        self.selector = selector

    def matches(self, reason: str) -> bool:
        if self.selector is None:
            return True
        if self.selector in CODES:
            return reason_code(reason) == self.selector
        return reason == self.selector

    def __str__(self) -> str:
        return "any reason" if self.selector is None else f"reason {self.selector}"
