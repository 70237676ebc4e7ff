"""The OpenAPI 3.1 document of the HTTP API, built from the constants the resources answer with and the
event wire model (tracker.events), so that what pydantic states is not written again here."""

from __future__ import annotations

from typing import Any

from api import dashboard, errors, middleware, resources, waits
from tracker import cancels, events, labels, leases, listing, merge, roles, webhooks
from tracker.events import MAX_MESSAGE_CHARS

TIME_PATTERN = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"
MAX_ID = 2**63 - 1

_SECURED: list[dict[str, list[str]]] = [{"bearer": []}, {"access_token": []}, {"mojolicious": []}]
_PUBLIC: list[dict[str, list[str]]] = []
# Every operation can meet these: a path outside the served versions, a later minor of a served
# major, and the requests gunicorn refuses before the app sees them (api.errors.refusal_for).
_ANY_PATH = {
    "400": "Malformed",
    "404": "NotFound",
    "414": "UriTooLong",
    "417": "ExpectationFailed",
    "431": "HeadersTooLarge",
    "501": "NotImplemented",
}
_BODY = {"411": "LengthRequired", "413": "ContentTooLarge", "415": "UnsupportedMediaType"}
# SPEC §2: what a state-changing request with a cookie's credentials, or a login, meets from another origin.
_CROSS_ORIGIN = (
    f"`{middleware.CROSS_ORIGIN}`: with a cookie's credentials (or to log in), an `Origin` other than the "
    "tracker's own, or a `Sec-Fetch-Site` other than `same-origin` or `none`"
)
_NOT_JSON = (
    f"`{middleware.NOT_JSON}`, with a cookie's credentials (a Bearer token's body may also come without a "
    "Content-Type); or a body that is not application/json"
)


def document(versions: tuple[str, ...], notify_allowed: webhooks.AllowList | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route the app serves, under each of ``versions``, as
    this server takes them: a job's ``notify_url`` only within ``notify_allowed`` (None: webhooks off)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "async_status tracker",
            "version": versions[-1],
            "description": "Traffic Ops compatible job statuses. Every body is JSON; every error is "
            '`{"alerts":[{"text":"…","level":"error"}]}`. A request that changes state with a cookie\'s '
            "credentials, or a login, must come from the tracker's own origin (`Origin`, `Sec-Fetch-Site`; "
            "else 403) and declare its body `Content-Type: application/json` (else 415); a Bearer token "
            "needs neither.",
        },
        "paths": {
            "/api/{version}/async_status": {
                "parameters": [{"$ref": "#/components/parameters/Version"}],
                "get": _list_jobs(),
                "post": _create_job(),
            },
            "/api/{version}/async_status/{id}": {
                "parameters": [{"$ref": "#/components/parameters/Version"}],
                "get": _get_job(),
            },
            "/api/{version}/async_status/{id}/events": {
                "parameters": [{"$ref": "#/components/parameters/Version"}],
                "get": _get_timeline(),
            },
            "/api/{version}/user/login": {
                "parameters": [{"$ref": "#/components/parameters/Version"}],
                "post": _login(),
            },
            "/api/{version}/user/logout": {
                "parameters": [{"$ref": "#/components/parameters/Version"}],
                "post": _logout(),
            },
            "/api/{version}/ping": {
                "parameters": [{"$ref": "#/components/parameters/Version"}],
                "get": _operation(
                    "ping",
                    "Answers while the process serves (health checks).",
                    _PUBLIC,
                    {"200": _json("pong", "#/components/schemas/Pong")},
                ),
            },
            "/api/{version}/openapi.json": {
                "parameters": [{"$ref": "#/components/parameters/Version"}],
                "get": _operation(
                    "getOpenApiDocument",
                    "This document.",
                    _PUBLIC,
                    {"200": _json("The OpenAPI 3.1 document", "#/components/schemas/Document")},
                ),
            },
            "/api/{version}/dead_letters": {
                "parameters": [{"$ref": "#/components/parameters/Version"}],
                "get": _operation(
                    "getDeadLetterCount",
                    f"How many messages the dead-letter queue holds (read from RabbitMQ at most every "
                    f"{dashboard.DEAD_LETTER_COUNT_TTL_S:g} s per API process). Permission {roles.READ}.",
                    _SECURED,
                    {
                        "200": _json("The count", "#/components/schemas/DeadLetterCount"),
                        "401": _ref("Unauthorized"),
                        "403": _ref("Forbidden"),
                        "503": _ref("BrokerUnavailable"),
                    },
                ),
            },
            **_observability(),
            **_dashboard(),
            **_cancels(),
            **_current_user(),
        },
        "components": _components(versions, notify_allowed or webhooks.AllowList()),
    }


def _observability() -> dict[str, Any]:
    """SPEC §8's three routes, outside the versions and without authentication."""
    return {
        "/healthz": {
            "get": _operation(
                "getHealth",
                "200 while the process serves.",
                _PUBLIC,
                {"200": _json("Serving", "#/components/schemas/Status")},
            )
        },
        "/readyz": {
            "get": _operation(
                "getReadiness",
                "200 when the database answers and holds the newest schema; else 503 saying which is not so.",
                _PUBLIC,
                {
                    "200": _json("Ready", "#/components/schemas/Status"),
                    "503": _ref("NotReady"),
                },
            )
        },
        "/metrics": {
            "get": _operation(
                "getMetrics",
                "Every API worker's metrics together, in the Prometheus text format (SPEC §8).",
                _PUBLIC,
                {
                    "200": {
                        "description": "The Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
    }


def _dashboard() -> dict[str, Any]:
    """The dashboard's page and files (SPEC §7): public, since the page itself holds the login form."""
    revalidated = {"Cache-Control": _header(dashboard.CACHE_CONTROL, "Revalidated at each use")}
    return {
        route: {
            "get": _operation(
                "getDashboard" if route == "/" else "getDashboard" + name.rsplit(".", 1)[1].capitalize(),
                "The dashboard, a web page for people." if route == "/" else f"The dashboard's {name}.",
                _PUBLIC,
                {
                    "200": {
                        "description": f"`{name}`, with an ETag, `Cache-Control: {dashboard.CACHE_CONTROL}` and "
                        "the page's Content-Security-Policy",
                        "content": {content_type.split(";")[0]: {"schema": {"type": "string"}}},
                        "headers": revalidated,
                    },
                    "304": {
                        "description": "Not Modified: the ETag in If-None-Match is the current one",
                        "headers": revalidated,
                    },
                },
            )
        }
        for route, (name, content_type) in dashboard.ASSETS.items()
    }


# SPEC §11's creation fields, as tracker.labels checks them. A pattern is matched against the whole
# text (lookahead for the end, so that a trailing newline, which Python's "$" would let through, is not).
_KIND = {"type": "string", "pattern": f"^{labels.KIND_PATTERN}(?![\\s\\S])"}
_LABELS = {
    "type": "object",
    "maxProperties": labels.MAX_LABELS,
    "propertyNames": {"pattern": f"^{labels.LABEL_KEY_PATTERN}(?![\\s\\S])"},
    "additionalProperties": {
        "type": "string",
        "maxLength": labels.MAX_LABEL_VALUE_CHARS,
        "pattern": "^[^\\u0000]*$",
    },
}

_JOB_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The job's id, read as Go's strconv.ParseInt does (sign and leading zeros allowed). "
    "Not an integer, or beyond int64: 400. No such job (0 and negatives included): 404.",
    "schema": {"type": "integer", "format": "int64", "minimum": -MAX_ID - 1, "maximum": MAX_ID},
}


def _create_job() -> dict[str, Any]:
    operation = _operation(
        "createJob",
        f"Start tracking a new job. Permission {roles.CREATE}.",
        _SECURED,
        {
            "202": {
                **_json("The job, PENDING", "#/components/schemas/JobCreated"),
                "headers": {
                    "Location": {
                        "description": "/api/{version}/async_status/{id} of the new job",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                },
            },
            "400": _ref("BadRequest"),
            "401": _ref("Unauthorized"),
            "403": _ref("Forbidden", f"`missing required Permissions: {roles.CREATE}`, or {_CROSS_ORIGIN}"),
            "503": _ref("Unavailable"),
            **{code: _ref(name) for code, name in _BODY.items()},
            "415": _ref("UnsupportedMediaType", _NOT_JSON),
        },
    )
    operation["requestBody"] = {
        "required": False,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewJob"}}},
    }
    return operation


def _list_jobs() -> dict[str, Any]:
    operation = _operation(
        "listJobs",
        f"Jobs, filtered by status, ordered, a page at a time (SPEC §7). Permission {roles.READ}.",
        _SECURED,
        {
            "200": _streamed(_json("The page, and how many jobs match the filters", "#/components/schemas/JobList")),
            "400": _ref(
                "BadRequest",
                "A parameter's value, named in the alert, e.g. "
                f"`limit parameter must be an integer from {listing.MIN_LIMIT} to {listing.MAX_LIMIT}`",
            ),
            "401": _ref("Unauthorized"),
            "403": _ref("Forbidden"),
            "503": _ref("Unavailable"),
        },
    )
    int64 = {"type": "integer", "format": "int64", "maximum": listing.MAX_INT64}
    operation["parameters"] = [
        {
            "name": "status",
            "in": "query",
            "description": "Keep jobs with any of these statuses (repeat the parameter for more than one). "
            "Absent: all.",
            "style": "form",
            "explode": True,
            "schema": {"type": "array", "items": {"enum": list(listing.STATUSES)}},
        },
        {
            "name": "orderby",
            "in": "query",
            "description": "The sort key; ties are broken by id in the same direction. A NULL end_time (a "
            "PENDING job) counts as later than any time. status sorts as text.",
            "schema": {"enum": list(listing.ORDER_KEYS), "default": "id"},
        },
        {
            "name": "sortOrder",
            "in": "query",
            "schema": {"enum": list(listing.SORT_ORDERS), "default": "asc"},
        },
        {
            "name": "limit",
            "in": "query",
            "description": "Jobs on the page.",
            "schema": {
                "type": "integer",
                "minimum": listing.MIN_LIMIT,
                "maximum": listing.MAX_LIMIT,
                "default": listing.DEFAULT_LIMIT,
            },
        },
        {
            "name": "offset",
            "in": "query",
            "description": "Jobs skipped before the page; wins over page. Costs as much as reading that many "
            "(docs/http-surface.md).",
            "schema": {**int64, "minimum": 0, "default": 0},
        },
        {
            "name": "page",
            "in": "query",
            "description": "The page number, from 1: offset = (page - 1) * limit. Ignored when offset is given.",
            "schema": {**int64, "minimum": 1},
        },
        {
            "name": "idBelow",
            "in": "query",
            "description": "Keep jobs whose id is less than this. With orderby=id&sortOrder=desc, the id of the "
            "last job of a page gives the next page at the cost of the first (keyset paging).",
            "schema": {**int64, "minimum": 0},
        },
        {
            "name": "idAbove",
            "in": "query",
            "description": "Keep jobs whose id is greater than this (keyset paging with orderby=id, ascending).",
            "schema": {**int64, "minimum": 0},
        },
        *_filter_parameters(),
    ]
    return operation


def _filter_parameters() -> list[dict[str, Any]]:
    """The list's filters of SPEC §11 (``listing.parse_filter``)."""
    started = {
        "anyOf": [
            {"type": "string", "format": "date-time"},
            {"type": "string", "pattern": f"^{listing.SPAN_PATTERN}(?![\\s\\S])"},
        ]
    }
    label = f"^{labels.LABEL_KEY_PATTERN}(=[^\\u0000]{{0,{labels.MAX_LABEL_VALUE_CHARS}}})?(?![\\s\\S])"

    def repeated(name: str, description: str, item: dict[str, Any]) -> dict[str, Any]:
        schema = {"type": "array", "items": item}
        return {
            "name": name,
            "in": "query",
            "description": description,
            "style": "form",
            "explode": True,
            "schema": schema,
        }

    return [
        repeated("kind", "Keep jobs of any of these kinds (repeat for more than one).", _KIND),
        repeated(
            "label",
            "Keep jobs with this label: `key=value` (split at the first `=`), or `key` with any value. Repeated, "
            "every one must match.",
            {"type": "string", "pattern": label},
        ),
        repeated(
            "errorCode",
            "Keep FAILED jobs whose error has any of these codes (repeat for more than one); `lost` and "
            "`timeout` are the tracker's own (SPEC §6).",
            {"type": "string", "pattern": f"^{events.ERROR_CODE_PATTERN}(?![\\s\\S])"},
        ),
        {
            "name": "startedAfter",
            "in": "query",
            "description": "Keep jobs started at or after this: an RFC 3339 time with an offset, or a span back "
            "from now (`90s`, `15m`, `2h`, `7d`).",
            "schema": started,
        },
        {
            "name": "startedBefore",
            "in": "query",
            "description": "Keep jobs started strictly before this (as startedAfter), so that adjacent windows "
            "share no job.",
            "schema": started,
        },
    ]


def _get_job() -> dict[str, Any]:
    operation = _operation(
        "getJobStatus",
        f"One job's status. Permission {roles.READ}. With the header `Prefer: wait=N` (RFC 7240; N from "
        f"{waits.MIN_WAIT_S} to {waits.MAX_WAIT_S}, more is taken as {waits.MAX_WAIT_S}) the answer to a PENDING "
        "job is held until its status changes or N seconds pass; any other Prefer value is ignored. Beyond the "
        "server's caps on held requests, answered at once without `Preference-Applied`.",
        _SECURED,
        {
            "200": {
                **_streamed(_json("The job", "#/components/schemas/JobStatus")),
                "headers": {
                    "Preference-Applied": {
                        "description": "`wait=N` when the request asked to wait and was held (N as honoured)",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
                    }
                },
            },
            "400": _ref("BadRequest", f"`{resources.ID_NOT_INTEGER}`"),
            "401": _ref("Unauthorized"),
            "403": _ref("Forbidden"),
            "404": _ref("NotFound", "`Not Found`, or a path nothing serves"),
            "503": _ref("Unavailable"),
        },
    )
    operation["parameters"] = [_JOB_ID]
    return operation


def _get_timeline() -> dict[str, Any]:
    operation = _operation(
        "getJobEvents",
        f"One job's timeline: every accepted event of it once, in merge-key order (occurred_at, seq, "
        f"event_id), the tracker's own lease events included. Permission {roles.READ}.",
        _SECURED,
        {
            "200": _json("The job's events; an empty list before its first", "#/components/schemas/JobEvents"),
            "400": _ref("BadRequest", f"`{resources.ID_NOT_INTEGER}`"),
            "401": _ref("Unauthorized"),
            "403": _ref("Forbidden"),
            "404": _ref("NotFound", "`Not Found`, or a path nothing serves"),
            "503": _ref("Unavailable"),
        },
    )
    operation["parameters"] = [_JOB_ID]
    return operation


def _login() -> dict[str, Any]:
    operation = _operation(
        "login",
        "Trade a username and password for the session cookies.",
        _PUBLIC,
        {
            "200": {
                **_json("`Successfully logged in.`", "#/components/schemas/SuccessAlerts"),
                "headers": {
                    "Set-Cookie": {
                        "description": "`access_token` and `mojolicious`: the same signed token; HttpOnly, "
                        "Path=/, SameSite=Strict, Max-Age the token lifetime, Secure when "
                        "configured.",
                        "schema": {"type": "string"},
                    }
                },
            },
            "400": _ref("BadRequest", f"`{resources.CREDENTIALS_REQUIRED}`, or a body that is not a JSON object"),
            "401": _ref("Unauthorized", f"`{resources.INVALID_LOGIN}`"),
            "403": _ref("Forbidden", _CROSS_ORIGIN),
            "429": _ref("TooManyRequests"),
            "503": _ref("Unavailable"),
            **{code: _ref(name) for code, name in _BODY.items()},
            "415": _ref(
                "UnsupportedMediaType", f"A body that is not declared `application/json` (`{middleware.NOT_JSON}`)"
            ),
        },
    )
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Credentials"}}},
    }
    return operation


def _logout() -> dict[str, Any]:
    return _operation(
        "logout",
        "End the session: the token sent (cookie or Bearer) is refused from then on, in every API process, "
        "and both cookies are cleared (Max-Age=0).",
        _SECURED,
        {
            "200": _json("`You are logged out.`", "#/components/schemas/SuccessAlerts"),
            "401": _ref("Unauthorized"),
            "403": _ref("Forbidden", _CROSS_ORIGIN),
            "415": _ref("UnsupportedMediaType", f"`{middleware.NOT_JSON}`, with a cookie's credentials"),
            "503": _ref("Unavailable"),
        },
    )


def _operation(
    operation_id: str, summary: str, security: list[dict[str, list[str]]], responses: dict[str, Any]
) -> dict[str, Any]:
    common = {code: _ref(name) for code, name in _ANY_PATH.items() if code not in responses}
    return {
        "operationId": operation_id,
        "summary": summary,
        "security": security,
        "responses": {
            code: response if "$ref" in response else _with_common_headers(response)
            for code, response in sorted({**common, **responses}.items())
        },
    }


def _header(value: str, description: str) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": {"type": "string", "const": value}}


def _with_common_headers(response: dict[str, Any]) -> dict[str, Any]:
    """``response`` with the headers every answer carries (api.errors.COMMON_HEADERS) beside its own."""
    common = {
        "X-Content-Type-Options": _header(errors.COMMON_HEADERS["X-Content-Type-Options"], "Never sniffed"),
        "Cache-Control": _header(
            errors.COMMON_HEADERS["Cache-Control"], "Kept by no cache: a job's status is private and changes"
        ),
    }
    return {**response, "headers": {**common, **response.get("headers", {})}}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": schema}}}}


def _streamed(response: dict[str, Any]) -> dict[str, Any]:
    """``response``, or with ``Accept: text/event-stream`` its stream of changes (SPEC §13, docs/streams.md)."""
    stream = {
        "schema": {"type": "string"},
        "example": 'event: job\nid: 1043\ndata: {"id":7,"status":"SUCCEEDED",…}\n\n',
    }
    return {
        **response,
        "description": response["description"] + "; with `Accept: text/event-stream`, Server-Sent Events of each "
        "change of a matching row (`event: job`, `id: <cursor>`, `data: <the row>`), resumed from `Last-Event-ID`, "
        "`event: reset` when that cannot be (SPEC §13)",
        "content": {**response["content"], "text/event-stream": stream},
    }


def _ref(name: str, description: str | None = None) -> dict[str, Any]:
    reference = {"$ref": f"#/components/responses/{name}"}
    return {**reference, "description": description} if description else reference


def _error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    response = _json(description, "#/components/schemas/ErrorAlerts")
    return _with_common_headers({**response, "headers": headers} if headers else response)


def _job_event(wire: dict[str, Any]) -> dict[str, Any]:
    """A timeline entry (SPEC §7): the event's fields as the wire model states them, but for the
    job's id (the path's), the fields the API renders itself, and when the tracker received it.

    A field or event type added to the wire model shows here by itself; such a field is not
    required, since an entry carries it only when its event does (SPEC §11). Nor has it a default:
    an entry never carries one for it.
    """
    rendered = {
        # The API gives the id in lowercase, the times in its one format, the message within
        # check_message's bound (a validator of the model's, which its schema does not state).
        "event_id": {"type": "string", "format": "uuid", "pattern": "^[0-9a-f-]{36}$"},
        "occurred_at": {"$ref": "#/components/schemas/Time"},
        "received_at": {
            "oneOf": [{"$ref": "#/components/schemas/Time"}, {"type": "null"}],
            "description": "When the tracker folded the event; null for events kept before the timeline was "
            "(migration 0005)",
        },
        "message": {"type": ["string", "null"], "maxLength": MAX_MESSAGE_CHARS},
    }
    properties: dict[str, Any] = {}
    for name, schema in wire["properties"].items():
        if name != "job_id":
            properties[name] = rendered.get(name) or _bare(schema)
        if name == "occurred_at":
            properties["received_at"] = rendered["received_at"]
    return {
        "type": "object",
        "required": ["event_id", "type", "occurred_at", "received_at", "seq", "message"],
        "additionalProperties": False,
        "properties": properties,
    }


def _bare(schema: dict[str, Any]) -> dict[str, Any]:
    """A wire field's schema as a field of an answer: without pydantic's title, and without a
    default, since an answer carries such a field only when it has a value."""
    return {key: value for key, value in schema.items() if key not in ("title", "default")}


def _notify_url(allowed: webhooks.AllowList) -> dict[str, Any]:
    """A new job's notify_url (SPEC §13) as this server takes it: within its allow-list, or not at all."""
    pattern = allowed.pattern()
    if pattern is None:
        return {
            "not": {},
            "description": f"Webhooks are off here (TRACKER_WEBHOOK_ALLOW is empty): `{webhooks.NOT_ALLOWED}`",
        }
    return {
        "type": "string",
        "maxLength": webhooks.MAX_URL_CHARS,
        "pattern": pattern,
        "description": f'Where to POST `{{"type":"{webhooks.EVENT_TYPE}","job":<the row>}}`, signed as Standard '
        f"Webhooks says, once the job has ended. Allowed origins: {', '.join(map(str, allowed.origins))}; "
        f"anything else is 400 `{webhooks.NOT_ALLOWED}`.",
    }


def _components(versions: tuple[str, ...], notify_allowed: webhooks.AllowList) -> dict[str, Any]:
    wire = events.wire_schema(ref_template="#/components/schemas/{model}")
    retry_after = {
        "description": "Seconds to wait",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
    return {
        "parameters": {
            "Version": {
                "name": "version",
                "in": "path",
                "required": True,
                "description": "A served API version. A later minor of a served major answers 501; anything else 404.",
                "schema": {"type": "string", "enum": list(versions)},
            },
        },
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "The token of the login cookies, signed with the server secret (HS256).",
            },
            "access_token": {"type": "apiKey", "in": "cookie", "name": "access_token"},
            "mojolicious": {"type": "apiKey", "in": "cookie", "name": "mojolicious"},
        },
        "responses": {
            "BadRequest": _error("Malformed input"),
            "Malformed": _error("A request gunicorn cannot parse as HTTP/1.x"),
            "Unauthorized": _error(
                f"`{errors.UNAUTHORIZED}`: no, invalid or expired credentials, or of a deleted user",
                **{"WWW-Authenticate": _header(errors.BEARER_CHALLENGE, "The scheme to authenticate with")},
            ),
            "Forbidden": _error("`missing required Permissions: <PERMISSION>`"),
            "Conflict": _error("`job <id> has already finished: <STATUS>`"),
            "NotFound": _error("A path nothing serves"),
            "LengthRequired": _error(f"`{resources.LENGTH_REQUIRED}`: a chunked body"),
            "ContentTooLarge": _error(f"A body over {resources.MAX_BODY_BYTES} bytes"),
            "UriTooLong": _error(f"A request line over {errors.MAX_REQUEST_LINE_BYTES} bytes"),
            "UnsupportedMediaType": _error("A body that is not application/json"),
            "TooManyRequests": _error(
                "`too many failed login attempts; try again in N seconds`", **{"Retry-After": retry_after}
            ),
            "HeadersTooLarge": _error(
                f"More than {errors.MAX_HEADER_FIELDS} header fields, or one over {errors.MAX_HEADER_FIELD_BYTES} bytes"
            ),
            "ExpectationFailed": _error("An `Expect` header other than `100-continue`"),
            "NotImplemented": _error(
                "A later minor version of a served major version, or a transfer coding other than chunked"
            ),
            "Unavailable": _error("`database unavailable, try again later`", **{"Retry-After": retry_after}),
            "BrokerUnavailable": _error(f"`{errors.BROKER_UNAVAILABLE}`", **{"Retry-After": retry_after}),
            "NotReady": _error(
                "The database does not answer, or its schema is not the newest", **{"Retry-After": retry_after}
            ),
        },
        "schemas": {
            **_cancel_schemas(),
            **_current_user_schemas(),
            "Time": {
                "type": "string",
                "pattern": TIME_PATTERN,
                "description": "RFC 3339 in UTC with exactly six fractional digits",
            },
            "Job": {
                "type": "object",
                "required": ["id", "status", "start_time", "end_time", "message"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                    "status": {"enum": [merge.PENDING, merge.SUCCEEDED, merge.FAILED]},
                    "start_time": {"$ref": "#/components/schemas/Time"},
                    "end_time": {
                        "oneOf": [{"$ref": "#/components/schemas/Time"}, {"type": "null"}],
                        "description": "null until the job is SUCCEEDED or FAILED",
                    },
                    "message": {"type": ["string", "null"], "maxLength": MAX_MESSAGE_CHARS},
                    # SPEC §11: each only when set
                    "kind": _KIND,
                    "labels": _LABELS,
                    "progress": {
                        **_bare(wire["properties"]["progress"]),
                        "description": "How far the job is, in percent: its latest event's that says",
                    },
                    "result": {"description": "What the job produced: its succeeded event's result, any JSON value"},
                    "error": {"$ref": "#/components/schemas/JobError"},
                    "cancel_requested_at": {
                        "$ref": "#/components/schemas/Time",
                        "description": "When its cancellation was first asked for",
                    },
                    # SPEC §13: only for a job created with a notify_url
                    "notify": {
                        "type": "object",
                        "required": ["url", "state", "attempts"],
                        "additionalProperties": False,
                        "description": "Its webhook: where, how its delivery goes, and the attempts started so far",
                        "properties": {
                            "url": {"type": "string", "maxLength": webhooks.MAX_URL_CHARS},
                            "state": {"enum": [webhooks.PENDING, webhooks.DELIVERED, webhooks.FAILED]},
                            "attempts": {"type": "integer", "minimum": 0},
                        },
                    },
                },
            },
            "JobStatus": {
                "type": "object",
                "required": ["response"],
                "additionalProperties": False,
                "properties": {"response": {"$ref": "#/components/schemas/Job"}},
            },
            "JobEvent": _job_event(wire),
            **wire.get("$defs", {}),  # the models the event's fields are made of, if any
            "JobEvents": {
                "type": "object",
                "required": ["response"],
                "additionalProperties": False,
                "properties": {"response": {"type": "array", "items": {"$ref": "#/components/schemas/JobEvent"}}},
            },
            "JobList": {
                "type": "object",
                "required": ["response", "summary"],
                "additionalProperties": False,
                "properties": {
                    "response": {
                        "type": "array",
                        "maxItems": listing.MAX_LIMIT,
                        "items": {"$ref": "#/components/schemas/Job"},
                    },
                    "summary": {
                        "type": "object",
                        "required": ["count"],
                        "additionalProperties": False,
                        "properties": {
                            "count": {
                                "type": "integer",
                                "minimum": 0,
                                "description": "Jobs matching the filters, whatever the page: exact up to "
                                f"{listing.COUNT_CAP}, the database's estimate beyond (then `estimated` is true).",
                            },
                            "estimated": {
                                "const": True,
                                "description": "Present only when `count` is an estimate.",
                            },
                        },
                    },
                },
            },
            "JobCreated": {
                "type": "object",
                "required": ["alerts", "response"],
                "additionalProperties": False,
                "properties": {
                    "alerts": _alert_list("success"),
                    "response": {
                        "allOf": [
                            {"$ref": "#/components/schemas/Job"},
                            {"properties": {"status": {"const": merge.PENDING}, "end_time": {"type": "null"}}},
                        ]
                    },
                },
            },
            "NewJob": {
                "type": "object",
                "properties": {
                    "message": {
                        "type": ["string", "null"],
                        "maxLength": MAX_MESSAGE_CHARS,
                        "pattern": "^[^\\u0000]*$",
                        "description": f"Absent or null: `{merge.DEFAULT_MESSAGE}`",
                    },
                    "timeout_s": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": leases.MAX_TIMEOUT_S,
                        "description": "Seconds from the start after which a job still PENDING is failed with "
                        "`not finished within N s`. Absent: `TRACKER_JOB_TIMEOUT_S` (default 86400).",
                    },
                    "heartbeat_timeout_s": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": leases.MAX_TIMEOUT_S,
                        "description": "A heartbeat lease: a PENDING job none of whose events is received for this "
                        "many seconds is failed with `no event for N s: the worker is presumed lost`. Absent: "
                        "`TRACKER_HEARTBEAT_TIMEOUT_S` (default 0: no lease).",
                    },
                    "kind": {**_KIND, "description": "What kind of job it is, fixed for its life"},
                    "labels": {**_LABELS, "description": "Pairs to find it by, fixed for its life"},
                    "notify_url": _notify_url(notify_allowed),
                },
            },
            "Credentials": {
                "type": "object",
                "required": ["u", "p"],
                "properties": {"u": {"type": "string", "minLength": 1}, "p": {"type": "string", "minLength": 1}},
            },
            "Status": {
                "type": "object",
                "required": ["status"],
                "additionalProperties": False,
                "properties": {"status": {"const": "ok"}},
            },
            "DeadLetterCount": {
                "type": "object",
                "required": ["response"],
                "additionalProperties": False,
                "properties": {
                    "response": {
                        "type": "object",
                        "required": ["count"],
                        "additionalProperties": False,
                        "properties": {"count": {"type": "integer", "minimum": 0}},
                    }
                },
            },
            "Pong": {
                "type": "object",
                "required": ["ping"],
                "additionalProperties": False,
                "properties": {"ping": {"const": "pong"}},
            },
            "Document": {
                "type": "object",
                "required": ["openapi", "info", "paths"],
                "properties": {"openapi": {"const": "3.1.0"}},
            },
            "Alert": {
                "type": "object",
                "required": ["text", "level"],
                "additionalProperties": False,
                "properties": {"text": {"type": "string"}, "level": {"enum": ["success", "info", "warning", "error"]}},
            },
            "SuccessAlerts": _alerts("success"),
            "ErrorAlerts": _alerts("error"),
        },
    }


def _alerts(level: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["alerts"],
        "additionalProperties": False,
        "properties": {"alerts": _alert_list(level)},
    }


def _alert_list(level: str) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "items": {"allOf": [{"$ref": "#/components/schemas/Alert"}, {"properties": {"level": {"const": level}}}]},
    }


def _cancels() -> dict[str, Any]:
    """SPEC §12: POST .../async_status/{id}/cancel, and .../async_status/cancel with the list's filters."""
    version = [{"$ref": "#/components/parameters/Version"}]
    body = {
        "required": False,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CancelRequest"}}},
    }
    refused = {
        "401": _ref("Unauthorized"),
        "403": _ref("Forbidden", f"`missing required Permissions: {roles.CANCEL}`, or {_CROSS_ORIGIN}"),
        "503": _ref("Unavailable"),
        **{code: _ref(name) for code, name in _BODY.items()},
        "415": _ref("UnsupportedMediaType", _NOT_JSON),
    }
    one = _operation(
        "cancelJob",
        f"Ask for a PENDING job's cancellation: recorded as a `cancel_requested` event, and told to its "
        f"worker on the control exchange until it ends; failed by the tracker if still PENDING after the "
        f"grace. Asking again is harmless. Permission {roles.CANCEL}.",
        _SECURED,
        {
            "202": _json("The job, with cancel_requested_at", "#/components/schemas/CancelRequested"),
            "400": _ref("BadRequest", f"`{resources.ID_NOT_INTEGER}`, or a message the job cannot take"),
            "404": _ref("NotFound", "`Not Found`, or a path nothing serves"),
            "409": _ref("Conflict"),
            **refused,
        },
    )
    one["parameters"] = [_JOB_ID]
    one["requestBody"] = body
    not_filters = {"orderby", "sortOrder", "limit", "offset", "page", "idBelow", "idAbove"}
    many = _operation(
        "cancelJobs",
        f"Ask for the cancellation of every PENDING job the list's filters match (at least one filter "
        f"besides status; order and paging are ignored), at most {cancels.MAX_BULK} per call, lowest ids "
        f"first. Permission {roles.CANCEL}.",
        _SECURED,
        {
            "202": _json("How many jobs now have their cancellation asked", "#/components/schemas/CancelsRequested"),
            "400": _ref("BadRequest", "A parameter's value, named in the alert, or no filter besides status"),
            **refused,
        },
    )
    many["parameters"] = [p for p in _list_jobs()["parameters"] if p["name"] not in not_filters]
    many["requestBody"] = body
    return {
        "/api/{version}/async_status/{id}/cancel": {"parameters": version, "post": one},
        "/api/{version}/async_status/cancel": {"parameters": version, "post": many},
    }


def _cancel_schemas() -> dict[str, Any]:
    return {
        "CancelRequest": {
            "type": "object",
            "properties": {
                "message": {
                    "type": ["string", "null"],
                    "maxLength": MAX_MESSAGE_CHARS,
                    "pattern": "^[^\\u0000]*$",
                    "description": "The request's message, in the timeline and told to the worker. Absent or "
                    "null: `Cancellation requested by <user>.`",
                },
            },
        },
        "CancelRequested": {
            "type": "object",
            "required": ["alerts", "response"],
            "additionalProperties": False,
            "properties": {
                "alerts": _alert_list("success"),
                "response": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Job"},
                        {"required": ["cancel_requested_at"]},
                    ]
                },
            },
        },
        "CancelsRequested": {
            "type": "object",
            "required": ["response"],
            "additionalProperties": False,
            "properties": {
                "response": {
                    "type": "object",
                    "required": ["requested"],
                    "additionalProperties": False,
                    "properties": {"requested": {"type": "integer", "minimum": 0, "maximum": cancels.MAX_BULK}},
                }
            },
        },
    }


def _current_user() -> dict[str, Any]:
    """GET .../user/current: the caller, as Traffic Ops' endpoint of that name as far as it applies."""
    operation = _operation(
        "getCurrentUser",
        "The logged-in caller: username, role and the permissions the role grants (read-only; any role "
        "may ask). Traffic Ops' fields the tracker has no data for are left out.",
        _SECURED,
        {
            "200": _json("The caller", "#/components/schemas/CurrentUser"),
            "401": _ref("Unauthorized"),
            "503": _ref("Unavailable"),
        },
    )
    return {
        "/api/{version}/user/current": {"parameters": [{"$ref": "#/components/parameters/Version"}], "get": operation}
    }


def _current_user_schemas() -> dict[str, Any]:
    every = sorted(set().union(*roles.ROLES.values()))
    return {
        "CurrentUser": {
            "type": "object",
            "required": ["response"],
            "additionalProperties": False,
            "properties": {
                "response": {
                    "type": "object",
                    "required": ["username", "role", "localUser", "permissions"],
                    "additionalProperties": False,
                    "properties": {
                        "username": {"type": "string"},
                        "role": {"enum": sorted(roles.ROLES)},
                        "localUser": {"const": True},
                        "permissions": {
                            "type": "array",
                            "items": {"enum": every},
                            "uniqueItems": True,
                            "description": "The role's permissions, sorted (not in Traffic Ops' answer, "
                            "which leaves them to GET /roles)",
                        },
                    },
                }
            },
        },
    }
