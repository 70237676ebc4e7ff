"""The cancel endpoints (SPEC §12): POST /api/{version}/async_status/{id}/cancel, and
POST /api/{version}/async_status/cancel for every PENDING job the list's filters match."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import falcon
import falcon.uri

from api.middleware import requires
from api.resources import _initial_message as initial_message  # one reading of a body for every POST
from api.resources import _json_object as json_object
from api.resources import parse_job_id
from tracker import cancels, listing, roles, timefmt
from tracker.envelope import alerts
from tracker.rendering import job_view
from tracker.store import JobNotFound
from tracker.store.cancels import CancelRequests

Tell = Callable[[Sequence[cancels.CancelNotice]], object]
NEEDS_FILTER = "cancelling jobs needs at least one of the list's filters besides status"


class JobCancel:
    """POST /api/{version}/async_status/{id}/cancel: ask for one PENDING job's cancellation (202),
    record it as a ``cancel_requested`` event, and tell its worker; 409 for a finished job."""

    def __init__(self, requests: CancelRequests, tell: Tell) -> None:
        self._requests = requests
        self._tell = tell

    @requires(roles.CANCEL)
    def on_post(self, req: falcon.Request, resp: falcon.Response, version: str, job_id: str) -> None:
        number = parse_job_id(job_id)
        if number <= 0:
            raise JobNotFound(number)  # as GET of the job
        message = initial_message(json_object(req)) or cancels.default_message(req.context.user.username)
        job, notice = self._requests.request(number, message, timefmt.now())
        self._tell([notice])  # once committed; the consumers repeat it while the job stays PENDING
        resp.status = falcon.HTTP_202
        resp.media = {**alerts(f"Cancellation of job {number} requested.", "success"), "response": job_view(job)}


class JobsCancel:
    """POST /api/{version}/async_status/cancel?<the list's filters>: ask for the cancellation of
    every PENDING job they match (at most ``cancels.MAX_BULK``); 202 with how many. (GET of this
    path, once a job's whose id is no integer, is now 405 as any method a path does not serve.)
    """

    def __init__(self, requests: CancelRequests, tell: Tell) -> None:
        self._requests = requests
        self._tell = tell

    @requires(roles.CANCEL)
    def on_post(self, req: falcon.Request, resp: falcon.Response, version: str) -> None:
        params = falcon.uri.parse_query_string(req.query_string, keep_blank=True, csv=False)
        try:
            where = listing.parse_filter(params)
        except ValueError as exc:
            raise falcon.HTTPBadRequest(description=str(exc)) from None
        if not where.beyond_status:
            raise falcon.HTTPBadRequest(description=NEEDS_FILTER)
        message = initial_message(json_object(req)) or cancels.default_message(req.context.user.username)
        notices = self._requests.request_many(where, message, timefmt.now())
        self._tell(notices)
        resp.status = falcon.HTTP_202
        resp.media = {"response": {"requested": len(notices)}}
