"""Saying that a service a process needs is away: one line when it goes, one now and then while it
stays away, one when it is back; never a line per retry. No I/O but logging."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

REPEAT_S = 60.0  # while the same problem lasts, it is said again at most this often


class OutageLog:
    """What one part of a process says about a service it needs (the database, RabbitMQ) while it
    cannot use it, and what that part's readiness reports (``problem``). Thread-safe.

    ``failed`` logs at once the first time, and whenever the problem changes (an outage becoming a
    refused grant); while the same problem lasts, at most once every ``every_s``, saying for how
    long. ``recovered`` logs once, ``back`` and how long it was away, and clears the problem.
    """

    def __init__(
        self,
        logger: logging.Logger,
        back: str,
        *,
        every_s: float = REPEAT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._back = back
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._since = 0.0  # when the service went (the first problem of this outage)
        self._said_at = 0.0  # when the problem was last logged

    @property
    def problem(self) -> str | None:
        """The problem now, as ``failed`` was last told (``database unavailable``); None when there is none."""
        return self._problem

    def failed(self, problem: str, detail: str, *, level: int = logging.WARNING) -> None:
        """Note that ``problem`` holds, with ``detail`` (the error, and what is done about it; never
        a password); log it if it is new or has not been said for ``every_s``."""
        with self._lock:
            now = self._clock()
            if self._problem is None:
                self._since = now
            if problem != self._problem:
                text = f"{problem}: {detail}"
            elif now - self._said_at >= self._every_s:
                text = f"{problem} (for {now - self._since:.0f} s): {detail}"
            else:
                return
            self._problem = problem
            self._said_at = now
        self._logger.log(level, "%s", text)

    def recovered(self) -> None:
        """Note that the service works again; log it once, if there was a problem."""
        if self._problem is None:  # the usual case, on hot paths: no lock
            return
        with self._lock:
            if self._problem is None:
                return
            away = self._clock() - self._since
            self._problem = None
        self._logger.info("%s after %.0f s", self._back, away)
