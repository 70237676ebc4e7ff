"""A job's kind and labels (SPEC §11): what a job's creator may give, checked, and how they are kept.

Pure: no I/O. The API answers 400 with the ValueError's text, which names the field; the CLI and
the Python client check the same way before they send. Labels are kept as a tuple of (key, value)
pairs sorted by key (``Labels``): hashable, so a row holding them can key a cache, and in one
order whatever the order they were given in or the database keeps them in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MAX_KIND_CHARS = 64
MAX_LABELS = 16
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 256

Labels = tuple[tuple[str, str], ...]

KIND_PATTERN = rf"[A-Za-z0-9._-]{{1,{MAX_KIND_CHARS}}}"
LABEL_KEY_PATTERN = rf"[a-z0-9](?:[a-z0-9._/-]{{0,{MAX_LABEL_KEY_CHARS - 2}}}[a-z0-9])?"
_KIND = re.compile(KIND_PATTERN, re.ASCII)
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN, re.ASCII)

KIND_RULE = f"kind must be 1 to {MAX_KIND_CHARS} characters of A-Z a-z 0-9 . _ -"
LABELS_RULE = f"labels must be an object of at most {MAX_LABELS} pairs"
LABEL_KEY_RULE = f"1 to {MAX_LABEL_KEY_CHARS} characters of a-z 0-9 . _ / -, starting and ending with a letter or digit"


def check_kind(value: Any) -> str:
    """``value`` as a job's kind; raises ValueError naming the field (``kind must be …``)."""
    if type(value) is not str or _KIND.fullmatch(value) is None:
        raise ValueError(KIND_RULE)
    return value


def check_labels(value: Any) -> Labels:
    """``value`` (a JSON object) as a job's labels, sorted by key; raises ValueError naming the
    field and, for a bad pair, its key (``labels key 'Env' must be …``).

    Values may be any string of at most 256 characters, the empty one included, but for NUL and
    lone surrogates, which no database column of text can hold.
    """
    if not isinstance(value, Mapping):
        raise ValueError(LABELS_RULE)
    if len(value) > MAX_LABELS:
        raise ValueError(f"{LABELS_RULE}, not {len(value)}")
    for key, text in value.items():
        if type(key) is not str or _LABEL_KEY.fullmatch(key) is None:
            raise ValueError(f"labels key {key!r} must be {LABEL_KEY_RULE}")
        if type(text) is not str or len(text) > MAX_LABEL_VALUE_CHARS:
            raise ValueError(f"labels value of {key!r} must be a string of at most {MAX_LABEL_VALUE_CHARS} characters")
        if "\x00" in text or not _encodable(text):
            raise ValueError(f"labels value of {key!r} must hold neither NUL nor a lone surrogate")
    return as_labels(value)


def as_labels(pairs: Mapping[str, str] | None) -> Labels:
    """Labels as they are kept (sorted by key) from a mapping of them, or from None (none)."""
    return tuple(sorted(pairs.items())) if pairs else ()


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
