"""``tracker jobs cancel``: ask the API for jobs' cancellation (SPEC §12), by id or by the list's filters."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tracker.config import Settings
from tracker.errors import UsageError

_FILTERS = (("kind", "kind"), ("label", "label"), ("started_before", "startedBefore"))


def add_parser(jobs: Any) -> None:
    """Add ``cancel`` to the ``tracker jobs`` subcommands (``jobs``: argparse's subparsers action)."""
    cancel = jobs.add_parser(
        "cancel",
        help="ask for the cancellation of PENDING jobs, by id or by filters",
        description="Ask for the cancellation of PENDING jobs: each ID given, or every job the filters "
        "match (10,000 at most per call). Their workers are told, and a job still PENDING "
        "TRACKER_CANCEL_GRACE_S later is failed by the tracker. Example: tracker jobs cancel 7 8; "
        "tracker jobs cancel --kind export.csv --started-before 2h",
    )
    cancel.add_argument("id", type=int, nargs="*", help="the jobs to cancel")
    cancel.add_argument("--message", metavar="TEXT", help="why (default: Cancellation requested by <user>.)")
    cancel.add_argument("--kind", action="append", default=[], metavar="K", help="jobs of this kind (repeatable: any)")
    cancel.add_argument(
        "--label", action="append", default=[], metavar="KEY[=VALUE]", help="jobs with this label (repeatable: all)"
    )
    cancel.add_argument(
        "--started-before", action="append", default=[], metavar="T", help="jobs started before T (RFC 3339, or 2h, 7d)"
    )
    cancel.set_defaults(handler=_jobs_cancel)


def _jobs_cancel(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.cli import api_client
    from tracker.errors import ApiError

    filters = [(name, value) for option, name in _FILTERS for value in getattr(args, option)]
    if bool(args.id) == bool(filters):
        raise UsageError("give job ids, or filters (--kind, --label, --started-before), not both")
    client = api_client(settings)
    if filters:
        try:
            count = client.cancel_jobs(filters, args.message)
        except (ApiError, OSError) as exc:
            print(f"tracker: could not cancel: {exc}", file=sys.stderr)
            return 1
        print(f"requested: {count}")
        return 0
    failed = 0
    for job_id in args.id:
        try:
            row = client.cancel_job(job_id, args.message)
        except (ApiError, OSError) as exc:
            print(f"tracker: job {job_id}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{job_id} {row['status']} cancel requested at {row.get('cancel_requested_at')}")
    return 1 if failed else 0
