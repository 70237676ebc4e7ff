"""The resources under /api/{version}/: job statuses, and the login and logout of a cookie session."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import falcon
import falcon.uri
import orjson

from api.errors import BEARER_CHALLENGE
from api.middleware import COOKIES, is_json, opens_session, requires
from api.reads import JobReads
from api.revocations import RevokedTokens
from api.streams import Streams, wants_event_stream
from api.waits import client_gone_check, preferred_wait
from tracker import auth, labels, leases, listing, merge, roles, webhooks
from tracker.config import Settings
from tracker.envelope import alerts
from tracker.events import check_message
from tracker.model import Job
from tracker.rendering import event_view, job_view
from tracker.store import JobNotFound, JobStore
from tracker.users import LoginThrottle, UserStore

ID_NOT_INTEGER = "getting integer parameters: parameter 'id' not an integer"
CREDENTIALS_REQUIRED = "username and password are required"
INVALID_LOGIN = "Invalid username or password."
MAX_BODY_BYTES = 64 * 1024
LENGTH_REQUIRED = "a request body must come with a Content-Length header"
MAX_USERNAME_CHARS = 128  # tracker_user.username; longer names cannot exist

_INTEGER = re.compile(r"(?P<sign>[+-]?)(?P<digits>[0-9]+)")
_INT64 = range(-(2**63), 2**63)
_NO_BODY = object()  # tells an absent body from a JSON null, which is not an object
_T = TypeVar("_T")


def parse_job_id(text: str) -> int:
    """The id in a path, read as Go's strconv.ParseInt does (sign, leading zeros, int64 range).

    Raises falcon.HTTPBadRequest with Traffic Ops' wording otherwise.
    """
    match = _INTEGER.fullmatch(text)
    if match is not None:
        # Go takes any number of leading zeros, but Python's int() refuses very long text: drop them.
        digits = match["digits"].lstrip("0") or "0"
        if len(digits) <= 19 and (value := int(match["sign"] + digits)) in _INT64:
            return value
    raise falcon.HTTPBadRequest(description=ID_NOT_INTEGER)


@functools.lru_cache(maxsize=4096)
def _job_body(job: Job) -> bytes:
    """The body of GET for ``job``, kept for the rows asked for most (Job is immutable, so exact).

    Rendering the times and the JSON is a large share of a GET answered from the row cache.
    """
    return orjson.dumps({"response": job_view(job)})


@functools.lru_cache(maxsize=4096)
def _row_json(job: Job) -> bytes:
    """One row of the list, kept for the rows shown most (a page polled by the dashboard, say)."""
    return orjson.dumps(job_view(job))


class JobStatus:
    """GET /api/{version}/async_status/{id}: one job's status; with ``Prefer: wait=N``, held while
    the job is PENDING, for N seconds at most (SPEC §7), unless the caps on held requests are
    reached (then answered at once, without ``Preference-Applied``: a wait is a preference), or
    until its client goes."""

    def __init__(self, jobs: JobReads, streams: Streams | None = None) -> None:
        self._jobs = jobs
        self._streams = streams

    @requires(roles.READ)
    def on_get(self, req: falcon.Request, resp: falcon.Response, version: str, job_id: str) -> None:
        number = parse_job_id(job_id)
        if number <= 0:
            raise JobNotFound(number)  # ids start at 1; no need to ask the database
        if self._streams is not None and wants_event_stream(req.get_header("Accept")):
            self._streams.answer_job(req, resp, self._jobs.get_job(number))  # SPEC §13
            return
        wait_s = preferred_wait(req.get_header("Prefer"))
        if wait_s is None:
            job = self._jobs.get_job(number)
        else:
            job, held = self._jobs.wait_for(number, wait_s, req.context.user.username, client_gone_check(req.env))
            if held:
                resp.set_header("Preference-Applied", f"wait={wait_s}")
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _job_body(job)


class JobTimeline:
    """GET /api/{version}/async_status/{id}/events: every accepted event of one job, in merge-key order."""

    def __init__(self, jobs: JobReads) -> None:
        self._jobs = jobs

    @requires(roles.READ)
    def on_get(self, _req: falcon.Request, resp: falcon.Response, version: str, job_id: str) -> None:
        number = parse_job_id(job_id)
        if number <= 0:
            raise JobNotFound(number)  # as GET of the job itself
        resp.content_type = falcon.MEDIA_JSON
        resp.data = orjson.dumps({"response": [event_view(event) for event in self._jobs.timeline(number)]})


class JobStatuses:
    """/api/{version}/async_status: GET lists jobs (SPEC §7); POST starts tracking a new job, with its
    deadline and lease (SPEC §6), its kind and labels (SPEC §11), and its webhook (SPEC §13)."""

    def __init__(self, jobs: JobStore, settings: Settings, streams: Streams | None = None) -> None:
        self._jobs = jobs
        self._streams = streams
        self._default_timeout_s = settings.job_timeout_s
        self._default_heartbeat_timeout_s = settings.heartbeat_timeout_s
        self._notify_allowed = settings.webhook_origins

    @requires(roles.READ)
    def on_get(self, req: falcon.Request, resp: falcon.Response, version: str) -> None:
        params = falcon.uri.parse_query_string(req.query_string, keep_blank=True, csv=False)
        try:
            query = listing.parse_query(params)
        except ValueError as exc:
            raise falcon.HTTPBadRequest(description=str(exc)) from None
        if self._streams is not None and wants_event_stream(req.get_header("Accept")):
            self._streams.answer_list(req, resp, query)  # SPEC §13: the filters, not the page
            return
        page = self._jobs.list_jobs(query)
        summary: dict[str, Any] = {"count": page.count.value}
        if page.count.estimated:
            summary["estimated"] = True
        resp.content_type = falcon.MEDIA_JSON
        resp.data = b"".join(
            (b'{"response":[', b",".join(map(_row_json, page.jobs)), b'],"summary":', orjson.dumps(summary), b"}")
        )

    @requires(roles.CREATE)
    def on_post(self, req: falcon.Request, resp: falcon.Response, version: str) -> None:
        body = _json_object(req)
        message = _initial_message(body)
        limits = leases.limits_for(
            _timeout(body, "timeout_s"),
            _timeout(body, "heartbeat_timeout_s"),
            self._default_timeout_s,
            self._default_heartbeat_timeout_s,
        )
        kind = _checked(body, "kind", labels.check_kind)
        given = _checked(body, "labels", labels.check_labels)
        notify_url = _checked(
            body, "notify_url", functools.partial(webhooks.check_notify_url, allowed=self._notify_allowed)
        )
        job = self._jobs.create_job(message, limits, kind=kind, labels=given or (), notify_url=notify_url)
        location = f"/api/{version}/async_status/{job.id}"
        resp.status = falcon.HTTP_202
        resp.location = location
        resp.media = {
            **alerts(f"{merge.DEFAULT_MESSAGE} Status updates can be found here: {location}", "success"),
            "response": job_view(job),
        }


class Ping:
    """GET /api/{version}/ping: answers while the process serves, with no authentication (health checks)."""

    def on_get(self, _req: falcon.Request, resp: falcon.Response, version: str) -> None:
        resp.media = {"ping": "pong"}


class OpenApiDocument:
    """GET /api/{version}/openapi.json: the OpenAPI 3.1 description of the API, with no authentication."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._body = orjson.dumps(document)

    def on_get(self, _req: falcon.Request, resp: falcon.Response, version: str) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body


class Login:
    """POST /api/{version}/user/login: trade a username and password for session cookies."""

    def __init__(self, users: UserStore, throttle: LoginThrottle, tokens: auth.Tokens, secure_cookies: bool) -> None:
        self._users = users
        self._throttle = throttle
        self._tokens = tokens
        self._secure = secure_cookies

    @opens_session
    def on_post(self, req: falcon.Request, resp: falcon.Response, version: str) -> None:
        body = _json_object(req)
        username, password = body.get("u"), body.get("p")
        if not (isinstance(username, str) and username and isinstance(password, str) and password):
            raise falcon.HTTPBadRequest(description=CREDENTIALS_REQUIRED)
        storable = len(username) <= MAX_USERNAME_CHARS and "\x00" not in username
        # A name no user can have is still counted against the client, never looked up.
        counted, address = (username if storable else None), req.remote_addr
        wait = math.ceil(self._throttle.locked_for(counted, address))
        if wait > 0:
            raise falcon.HTTPTooManyRequests(
                description=f"too many failed login attempts; try again in {wait} seconds", retry_after=wait
            )
        user = self._users.authenticate(username, password) if storable else None
        if user is None:
            self._throttle.failed(counted, address)
            raise falcon.HTTPUnauthorized(description=INVALID_LOGIN, challenges=[BEARER_CHALLENGE])
        self._throttle.succeeded(username, address)
        token = self._tokens.issue(user.username, user.account_id)
        for name in COOKIES:
            resp.set_cookie(
                name,
                token,
                max_age=self._tokens.ttl_s,
                path="/",
                secure=self._secure,
                http_only=True,
                same_site="Strict",
            )
        resp.media = alerts("Successfully logged in.", "success")


class Logout:
    """POST /api/{version}/user/logout: end the session: its token, in every API process (whether
    it came as a cookie or as Bearer), and the cookies."""

    def __init__(self, revoked: RevokedTokens, secure_cookies: bool) -> None:
        self._revoked = revoked
        self._secure = secure_cookies

    @requires()
    def on_post(self, req: falcon.Request, resp: falcon.Response, version: str) -> None:
        self._revoked.revoke(req.context.claims)
        for name in COOKIES:
            # "0" as text: Falcon leaves out a falsy max_age, and Max-Age=0 is what deletes a cookie.
            resp.set_cookie(
                name,
                "",
                max_age="0",  # type: ignore[arg-type]
                path="/",
                secure=self._secure,
                http_only=True,
                same_site="Strict",
            )
        resp.media = alerts("You are logged out.", "success")


def _json_object(req: falcon.Request) -> dict[str, Any]:
    """The request body as a JSON object; an absent body is an empty one. Raises falcon.HTTPError."""
    if req.content_length is None and req.get_header("Transfer-Encoding"):
        # Falcon reads as much body as Content-Length says: without one, a chunked body would pass for empty.
        raise falcon.HTTPLengthRequired(description=LENGTH_REQUIRED)
    if (req.content_length or 0) > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(description=f"the request body must be at most {MAX_BODY_BYTES} bytes")
    if is_json(req.content_type):
        # Falcon matches media types case-sensitively; JSON is JSON in any case (RFC 9110).
        try:
            body = req.options.media_handlers[falcon.MEDIA_JSON].deserialize(
                req.bounded_stream, req.content_type, req.content_length
            )
        except falcon.MediaNotFoundError:
            body = _NO_BODY
    else:
        body = req.get_media(default_when_empty=_NO_BODY)  # no type, or */*: read as JSON
    if body is _NO_BODY:
        return {}
    if not isinstance(body, dict):
        raise falcon.HTTPBadRequest(description="the request body must be a JSON object")
    return body


def _initial_message(body: dict[str, Any]) -> str | None:
    """The creation message a body asks for; None for the default. Raises falcon.HTTPBadRequest."""
    try:
        return check_message(body.get("message"))
    except ValueError as exc:
        raise falcon.HTTPBadRequest(description=f"'message' {exc}") from None


def _checked(body: dict[str, Any], field: str, check: Callable[[Any], _T]) -> _T | None:
    """``check(body[field])``; None when the field is absent. Raises falcon.HTTPBadRequest with the
    check's ValueError, which names the field (a null is checked as any other value is)."""
    if field not in body:
        return None
    try:
        return check(body[field])
    except ValueError as exc:
        raise falcon.HTTPBadRequest(description=str(exc)) from None


def _timeout(body: dict[str, Any], field: str) -> int | None:
    """A job's ``timeout_s`` or ``heartbeat_timeout_s`` as the body gives it; None when absent.

    Raises falcon.HTTPBadRequest naming the field (anything but an integer in range, null included).
    """
    return _checked(body, field, functools.partial(leases.check_timeout, field))
