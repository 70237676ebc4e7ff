"""The one place where every error becomes an HTTP status and an alert (``tracker.envelope``)."""

from __future__ import annotations

import logging
from typing import Any

import falcon
from gunicorn.http import errors as http_errors

from tracker.envelope import alerts, route_not_found
from tracker.errors import DeadLettersUnavailable, JobFinished, PermissionDenied, RequestTimedOut, Unauthenticated
from tracker.store import JobNotFound, StoreUnavailable

log = logging.getLogger(__name__)

UNAUTHORIZED = "unauthorized, please log in."
# Every 401's WWW-Authenticate (RFC 9110 asks for one): Bearer, which no browser answers with a
# password dialog of its own, as it would Basic.
BEARER_CHALLENGE = 'Bearer realm="tracker"'
# Headers of every answer, the gunicorn refusals below included: a job's status is private and
# changes (nothing may keep it), and no body may be sniffed into another type. A responder may
# replace them (the dashboard's files are revalidated instead: api/dashboard.py).
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
BROKER_UNAVAILABLE = "RabbitMQ unavailable, try again later"
RETRY_AFTER_S = 5
# gunicorn's own defaults, stated so that the OpenAPI document and docs/http-surface.md can name them.
MAX_REQUEST_LINE_BYTES = 4094
MAX_HEADER_FIELDS = 100
MAX_HEADER_FIELD_BYTES = 8190


class ApiResponse(falcon.Response):
    """Falcon's response, starting with COMMON_HEADERS.

    Set here rather than by a middleware, since every GET pays for it: a dict update costs a
    fraction of two ``set_header`` calls. ``_headers`` (lower-case names) is Falcon's own store;
    tests/unit/test_api.py holds that every kind of answer carries them.
    """

    def __init__(self, options: falcon.ResponseOptions | None = None) -> None:
        super().__init__(options)
        self._headers.update(_COMMON_LOWER)


_COMMON_LOWER = {name.lower(): value for name, value in COMMON_HEADERS.items()}


def register(app: falcon.App[falcon.Request, falcon.Response]) -> None:
    """Make ``app`` answer every error, foreign or Falcon's own, with the alert envelope.

    Exceptions this maps: JobNotFound → 404, JobFinished → 409, Unauthenticated → 401 (with
    BEARER_CHALLENGE), PermissionDenied → 403, StoreUnavailable and DeadLettersUnavailable → 503,
    RequestTimedOut (a body not received in time) → 408, any other non-HTTP exception → 500
    (traceback logged, not sent).
    """
    app.set_error_serializer(_serialize)
    app.add_error_handler(Exception, _internal_error)
    app.add_error_handler(StoreUnavailable, _store_unavailable)
    app.add_error_handler(DeadLettersUnavailable, _broker_unavailable)
    app.add_error_handler(JobNotFound, _job_not_found)
    app.add_error_handler(JobFinished, _job_finished)
    app.add_error_handler(Unauthenticated, _unauthenticated)
    app.add_error_handler(PermissionDenied, _permission_denied)
    app.add_error_handler(RequestTimedOut, _request_timed_out)


def _serialize(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.media = alerts(_text_of(req, error))


def _text_of(req: falcon.Request, error: falcon.HTTPError) -> str:
    # Falcon raises these two itself, without the wording our clients expect.
    if isinstance(error, falcon.HTTPRouteNotFound):
        return route_not_found(req.path)
    if isinstance(error, falcon.HTTPMethodNotAllowed):
        return f"method {req.method} is not allowed on {req.path}"
    return error.description or error.title


def _internal_error(req: falcon.Request, _resp: falcon.Response, exc: Exception, _params: Any) -> None:
    log.error("unhandled error on %s %s", req.method, req.path, exc_info=exc)
    raise falcon.HTTPInternalServerError(description="Internal Server Error")


def _store_unavailable(req: falcon.Request, _resp: falcon.Response, exc: StoreUnavailable, _params: Any) -> None:
    log.warning("database unavailable on %s %s: %s", req.method, req.path, exc)
    raise falcon.HTTPServiceUnavailable(description="database unavailable, try again later", retry_after=RETRY_AFTER_S)


def _broker_unavailable(req: falcon.Request, _resp: falcon.Response, exc: DeadLettersUnavailable, _params: Any) -> None:
    log.warning("RabbitMQ unavailable on %s %s: %s", req.method, req.path, exc)
    raise falcon.HTTPServiceUnavailable(description=BROKER_UNAVAILABLE, retry_after=RETRY_AFTER_S)


def _job_not_found(_req: falcon.Request, _resp: falcon.Response, _exc: JobNotFound, _params: Any) -> None:
    raise falcon.HTTPNotFound(description="Not Found")


def _job_finished(_req: falcon.Request, _resp: falcon.Response, exc: JobFinished, _params: Any) -> None:
    raise falcon.HTTPConflict(description=str(exc))


def _unauthenticated(_req: falcon.Request, _resp: falcon.Response, _exc: Unauthenticated, _params: Any) -> None:
    raise falcon.HTTPUnauthorized(description=UNAUTHORIZED, challenges=[BEARER_CHALLENGE])


def _permission_denied(_req: falcon.Request, _resp: falcon.Response, exc: PermissionDenied, _params: Any) -> None:
    raise falcon.HTTPForbidden(description=f"missing required Permissions: {exc.permission}")


def _request_timed_out(req: falcon.Request, _resp: falcon.Response, exc: RequestTimedOut, _params: Any) -> None:
    log.warning("dropped a request from %s: %s", req.remote_addr, exc)
    raise falcon.HTTPError(falcon.HTTP_408, description=str(exc))


def refusal_for(exc: BaseException) -> tuple[int, str]:
    """The status and alert text for an exception gunicorn raised before the app saw the request."""
    if isinstance(exc, RequestTimedOut):
        return 408, str(exc)
    if isinstance(exc, http_errors.LimitRequestLine):
        return 414, f"the request line must be at most {MAX_REQUEST_LINE_BYTES} bytes"
    if isinstance(exc, http_errors.LimitRequestHeaders):
        return 431, (
            f"the request headers must be at most {MAX_HEADER_FIELDS} fields "
            f"of at most {MAX_HEADER_FIELD_BYTES} bytes each"
        )
    if isinstance(exc, http_errors.UnsupportedTransferCoding):
        return 501, "unsupported transfer coding"
    if isinstance(exc, http_errors.ExpectationFailed):
        return 417, "unsupported expectation"
    # A bad response header is the app's fault (500); every other parse error is the client's.
    app_fault = (
        # New in gunicorn 27, which types-gunicorn 26.2 does not know yet.
        http_errors.InvalidResponseHeader,  # type: ignore[attr-defined]
        http_errors.InvalidResponseHeaderName,  # type: ignore[attr-defined]
        http_errors.ConfigurationProblem,
    )
    if isinstance(exc, http_errors.ParseException) and not isinstance(exc, app_fault):
        return 400, "malformed HTTP request"
    return 500, "Internal Server Error"
