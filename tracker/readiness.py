"""Readiness (SPEC §8): ``/readyz`` says which check failed to anyone who asks; why, only to the log.

``/readyz`` needs no credentials, so its answer names a check (database, schema, writes, broker) and no
more: a driver's error names the database's host, port and driver, and a revision number the
version deployed. Those details go to the process's log, once each time they change rather than
at every probe.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable
from typing import Final, Literal

Check = Literal["database", "schema", "writes", "broker"]

# What /readyz answers for each failed check (several: joined with "; ", in this order).
ALERTS: Final[dict[Check, str]] = {
    "database": "the database does not answer",
    "schema": "the database schema is not the newest: run tracker migrate",
    # a consumer's: the database answers, and refuses its folds for a reason no event can cure
    "writes": "database cannot apply events (its schema or grants)",
    "broker": "not connected to RabbitMQ",
}


@dataclasses.dataclass(frozen=True)
class NotReady:
    """A failed check, and the detail of why (for the log only: it may name hosts, ports, revisions)."""

    check: Check
    detail: str

    @property
    def alert(self) -> str:
        return ALERTS[self.check]


class ReadinessLog:
    """Turns the failed checks of each probe into ``/readyz``'s alert, and logs their details when
    they change (not ready, not ready for another reason, ready again). Thread-safe."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._last: tuple[NotReady, ...] = ()

    def alert(self, found: Iterable[NotReady | None]) -> str | None:
        """The alert for the checks that failed in ``found`` (None entries passed); None when none did."""
        failed = tuple(sorted({problem for problem in found if problem is not None}, key=_in_order))
        with self._lock:
            changed, self._last = failed != self._last, failed
        if changed:
            if failed:
                for problem in failed:
                    self._log.warning("not ready: %s (%s)", problem.alert, problem.detail)
            else:
                self._log.info("ready again")
        return "; ".join(dict.fromkeys(p.alert for p in failed)) or None


def _in_order(problem: NotReady) -> tuple[int, str]:
    return list(ALERTS).index(problem.check), problem.detail
