"""``/healthz`` and ``/readyz``: is the process serving, and can it do its work (SPEC §8). No authentication."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from api.errors import RETRY_AFTER_S

OK = {"status": "ok"}


class Health:
    """200 while the process serves: if this answers, gunicorn and the app are up."""

    def on_get(self, _req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = OK


class Readiness:
    """200 when ``problem()`` finds none (the database answers with the newest schema); else 503 saying which."""

    def __init__(self, problem: Callable[[], str | None]) -> None:
        self._problem = problem

    def on_get(self, _req: falcon.Request, resp: falcon.Response) -> None:
        problem = self._problem()
        if problem is not None:
            raise falcon.HTTPServiceUnavailable(description=problem, retry_after=RETRY_AFTER_S)
        resp.media = OK
