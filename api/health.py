"""``/healthz`` and ``/readyz``: is the process serving, and can it do its work (SPEC §8). No authentication."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import falcon

from api.errors import RETRY_AFTER_S
from tracker.readiness import NotReady, ReadinessLog

log = logging.getLogger(__name__)

OK = {"status": "ok"}


class Health:
    """200 while the process serves: if this answers, gunicorn and the app are up."""

    def on_get(self, _req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = OK


class Readiness:
    """200 when ``checks()`` finds nothing wrong (the database answers with the newest schema); else
    503 saying which check failed, and no more: the detail goes to the log (``tracker.readiness``)."""

    def __init__(self, checks: Callable[[], Iterable[NotReady | None]]) -> None:
        self._checks = checks
        self._log = ReadinessLog(log)

    def on_get(self, _req: falcon.Request, resp: falcon.Response) -> None:
        alert = self._log.alert(self._checks())
        if alert is not None:
            raise falcon.HTTPServiceUnavailable(description=alert, retry_after=RETRY_AFTER_S)
        resp.media = OK
