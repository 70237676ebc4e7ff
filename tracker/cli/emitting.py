"""``tracker jobs emit``'s options for what an event says about its job (SPEC §11): progress, result, error code."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tracker import events
from tracker.errors import UsageError


def add_detail_options(emit: argparse.ArgumentParser) -> None:
    """``--progress``, ``--result`` and ``--error-code`` on the ``emit`` command."""
    emit.add_argument("--progress", metavar="PERCENT", help="how far the job is, a number from 0 to 100")
    emit.add_argument("--result", metavar="JSON", help="with succeeded: what the job produced, e.g. '{\"rows\":1200}'")
    emit.add_argument("--error-code", metavar="CODE", help="with failed: why, for machines, e.g. disk_full")


def detail_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The options given, as ``Publisher.emit`` takes them, checked as the consumer will check
    them; raises UsageError naming the option."""
    fields: dict[str, Any] = {}
    if args.progress is not None:
        fields["progress"] = _progress(args.progress)
    if args.result is not None:
        if args.type != "succeeded":
            raise UsageError("--result goes only with succeeded")
        fields["result"] = _result(args.result)
    if args.error_code is not None:
        if args.type != "failed":
            raise UsageError("--error-code goes only with failed")
        try:
            fields["error_code"] = events.check_error_code(args.error_code)
        except ValueError as exc:  # "code must be …"
            raise UsageError("--error-code" + str(exc).removeprefix("code")) from None
    return fields


def _progress(text: str) -> float:
    try:
        return events.check_progress(float(text))
    except ValueError:  # not a number, nan, inf, or out of bounds
        raise UsageError("--progress must be a number from 0 to 100") from None


def _result(text: str) -> Any:
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise UsageError(f"--result must be JSON ({reason})") from None
    try:
        events.json_text(value)
    except ValueError as exc:
        raise UsageError(f"--result {exc}") from None
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
