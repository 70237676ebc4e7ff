"""The OpenAPI document in step with the app: same routes and methods, served as built, schemas that hold."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import typing
from typing import Annotated, Any, Literal

import falcon
import falcon.inspect
import falcon.testing
import jsonschema_rs
import pydantic
import pytest

from api import app as api_app
from api import openapi
from api.middleware import WRITE_METHODS
from tracker import auth, events, webhooks
from tracker.config import Settings
from tracker.errors import JobNotFound
from tracker.labels import Labels
from tracker.listing import Count, JobQuery
from tracker.model import Job, JobPage, TimelineEvent
from tracker.users import User

SECRET = "unit-secret-" + "o" * 40
DOCUMENT = openapi.document(api_app.SERVED_VERSIONS)
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
SEED_EXAMPLE = {
    "response": {
        "id": 1,
        "status": "PENDING",
        "start_time": "2021-02-18T17:13:56.352261Z",
        "end_time": None,
        "message": "Async job has started.",
    }
}


_AT = dt.datetime(2021, 2, 18, 17, 14, tzinfo=dt.UTC)


class OneJob:
    """Job 1 exists, and job 3, which says everything SPEC §11 and §13 let a job say; creating one gives job 2."""

    def get_job(self, job_id: int) -> Job:
        start = dt.datetime(2021, 2, 18, 17, 13, 56, 352261, tzinfo=dt.UTC)
        if job_id == 1:
            return Job(1, "SUCCEEDED", start, _AT, None)
        if job_id == 3:
            return Job(
                3,
                "FAILED",
                start,
                _AT,
                "disk full",
                "export.csv",
                (("env", "prod"), ("team/owner", "ops")),
                62.5,
                None,
                "disk_full",
                '{"free_bytes":0,"paths":["/var"]}',
                start,
                "https://hooks.example.com/jobs?team=ops",
                "delivered",
                2,
            )
        raise JobNotFound(job_id)

    def timeline(self, job_id: int) -> list[TimelineEvent]:
        if job_id == 1:
            return [TimelineEvent("3f1c8a52-7b4e-4c1d-9a0e-2b6f5d8c9e01", "succeeded", _AT, _AT, 0, None)]
        if job_id == 3:
            return [
                TimelineEvent("3f1c8a52-7b4e-4c1d-9a0e-2b6f5d8c9e02", "progress", _AT, _AT, 1, None, 62.5),
                TimelineEvent("3f1c8a52-7b4e-4c1d-9a0e-2b6f5d8c9e03", "cancel_requested", _AT, _AT, 2, "stop"),
                TimelineEvent("3f1c8a52-7b4e-4c1d-9a0e-2b6f5d8c9e04", "succeeded", _AT, None, 3, None, 100.0, "[1]"),
                TimelineEvent(
                    "3f1c8a52-7b4e-4c1d-9a0e-2b6f5d8c9e05", "failed", _AT, _AT, 4, None, None, None, "lost", '"x"'
                ),
            ]
        raise JobNotFound(job_id)

    def list_jobs(self, query: JobQuery) -> JobPage:
        jobs = [self.get_job(1), self.get_job(3)] if "SUCCEEDED" in query.kept_statuses and query.offset == 0 else []
        return JobPage(jobs, Count(2_500_000, estimated=True) if query.statuses else Count(len(jobs)))

    def create_job(
        self,
        message: str | None = None,
        limits: object = None,
        *,
        kind: str | None = None,
        labels: Labels = (),
        notify_url: str | None = None,
    ) -> Job:
        start = dt.datetime(2021, 2, 18, 17, 15, tzinfo=dt.UTC)
        job = Job(2, "PENDING", start, None, message or "Async job has started.", kind, labels)
        return job if notify_url is None else dataclasses.replace(job, notify_url=notify_url, notify_state="pending")


class RolesByName:
    """Every name is a user whose role is the name itself (``operations``, ``read-only``)."""

    def get(self, username: str) -> User | None:
        return User(username, username, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), account_id=username)


@pytest.fixture(scope="module")
def client() -> falcon.testing.TestClient:
    deps = api_app.Deps(
        jobs=OneJob(),
        users=RolesByName(),
        throttle=None,  # type: ignore[arg-type]
        tokens=auth.Tokens(SECRET, 60),
        settings=Settings(secret=SECRET),
    )
    return falcon.testing.TestClient(api_app.create_app(deps))


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {auth.Tokens(SECRET, 60).issue(role, role)}"}


def shape(path: str) -> str:
    """A path with its fields blanked: Falcon's ``{job_id}`` and the document's ``{id}`` are one route."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def validator(name: str) -> Any:
    """A validator for one component schema, its references resolved within the document."""
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}
    )


def test_every_route_is_documented_with_its_methods_and_nothing_else(client: falcon.testing.TestClient) -> None:
    routed = {
        (shape(route.path), method.method.lower())
        for route in falcon.inspect.inspect_app(client.app).routes
        for method in route.methods
        if not method.internal
    }  # internal: Falcon's 405 and OPTIONS
    documented = {(shape(path), method) for path, method, _ in operations()}
    assert routed == documented


def test_the_served_document_is_the_built_one(client: falcon.testing.TestClient) -> None:
    for version in api_app.SERVED_VERSIONS:
        result = client.simulate_get(f"/api/{version}/openapi.json")  # no credentials needed
        assert result.status_code == 200
        assert result.headers["content-type"] == "application/json"
        assert result.json == DOCUMENT
    assert DOCUMENT["openapi"] == "3.1.0"
    assert DOCUMENT["components"]["parameters"]["Version"]["schema"]["enum"] == list(api_app.SERVED_VERSIONS)


def test_every_schema_is_valid_json_schema_and_every_reference_resolves() -> None:
    for schema in DOCUMENT["components"]["schemas"].values():
        jsonschema_rs.meta.validate(schema)

    def references(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [ref for value in node.values() for ref in references(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in references(value)]
        return []

    for ref in references(DOCUMENT):
        target: Any = DOCUMENT
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]


def test_every_operation_documents_its_credentials_and_error_envelope(client: falcon.testing.TestClient) -> None:
    schemes = set(DOCUMENT["components"]["securitySchemes"])
    for path, method, operation in operations():
        secured = bool(operation["security"])
        if secured:
            assert {name for requirement in operation["security"] for name in requirement} == schemes
        url = path.replace("{version}", "5.0").replace("{id}", "1")
        anonymous = client.simulate_request(method.upper(), url)
        assert (anonymous.status_code == 401) == secured, (path, method)
        assert ("401" in operation["responses"]) == (secured or operation["operationId"] == "login")
        read_only = client.simulate_request(method.upper(), url, headers=bearer("read-only"))
        # A write may also be refused 403 from another origin, with a cookie's credentials (SPEC §2).
        refusable = read_only.status_code == 403 or method.upper() in WRITE_METHODS
        assert refusable == ("403" in operation["responses"]), (path, method)
        for code, response in operation["responses"].items():
            if code.startswith(("4", "5")):
                name = response["$ref"].rsplit("/", 1)[1]
                content = DOCUMENT["components"]["responses"][name]["content"]
                assert content == {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorAlerts"}}}


def test_real_answers_match_their_documented_schemas(client: falcon.testing.TestClient) -> None:
    ops = bearer("operations")
    answers = [
        ("GET", "/api/5.0/async_status/1", ops, None),
        ("GET", "/api/5.0/async_status/3", ops, None),
        ("GET", "/api/5.0/async_status/3/events", ops, None),
        ("GET", "/api/5.0/async_status/abc", ops, None),
        ("GET", "/api/5.0/async_status/7", ops, None),
        ("GET", "/api/5.0/async_status/1/events", ops, None),
        ("GET", "/api/5.0/async_status/x/events", ops, None),
        ("GET", "/api/5.0/async_status/7/events", ops, None),
        ("GET", "/api/5.0/async_status/1/events", bearer("read-only"), None),
        ("GET", "/api/4.0/async_status/1", bearer("read-only"), None),
        ("GET", "/api/5.0/async_status", ops, None),
        ("GET", "/api/5.0/async_status?status=SUCCEEDED&status=FAILED&orderby=end_time&sortOrder=desc", ops, None),
        ("GET", "/api/5.0/async_status?offset=5", ops, None),
        ("GET", "/api/5.0/async_status?limit=0", ops, None),
        ("GET", "/api/5.0/async_status", bearer("read-only"), None),
        ("POST", "/api/4.1/async_status", ops, {"message": "rebuild"}),
        ("POST", "/api/5.0/async_status", ops, {"kind": "cdn.rebuild", "labels": {"env": "prod"}}),
        ("POST", "/api/5.0/async_status", ops, {"kind": "no spaces"}),
        ("POST", "/api/5.0/async_status", ops, {"labels": {"Env": "prod"}}),
        ("POST", "/api/4.1/async_status", ops, ["not", "an", "object"]),
        ("POST", "/api/5.0/user/logout", ops, None),
        ("GET", "/api/5.0/ping", {}, None),
        ("GET", "/api/5.0/openapi.json", {}, None),
    ]
    for method, url, headers, body in answers:
        result = client.simulate_request(method, url, headers=headers, json=body)
        path = next(
            path
            for path in DOCUMENT["paths"]
            if re.fullmatch(re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(path)), url.partition("?")[0])
        )
        response = DOCUMENT["paths"][path][method.lower()]["responses"][str(result.status_code)]
        if "$ref" in response:
            response = DOCUMENT["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        schema = response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        validator(schema).validate(result.json)
        for header, spec in response.get("headers", {}).items():
            assert not spec.get("required") or header.lower() in result.headers, (url, header)


def test_the_job_schema_is_the_contract() -> None:
    job_status = validator("JobStatus")
    job_status.validate(SEED_EXAMPLE)
    finished = {
        **SEED_EXAMPLE["response"],
        "status": "FAILED",
        "end_time": "2021-02-18T17:14:00.000000Z",
        "message": None,
    }
    job_status.validate({"response": finished})
    for breach in (
        {"end_time": "2021-02-18T17:14:00.000Z"},
        {"start_time": "2021-02-18T17:13:56.352261+00:00"},
        {"start_time": None},
        {"status": "RUNNING"},
        {"id": 0},
        {"id": "1"},
        {"extra": 1},
        {"kind": "a b"},
        {"kind": None},
        {"labels": {"A": "b"}},
        {"progress": 101},
        {"progress": None},
        {"error": {"details": 1}},
        {"cancel_requested_at": "yesterday"},
        {"notify": {"url": "https://h.example/x", "state": "sent", "attempts": 1}},
        {"notify": {"url": "https://h.example/x", "state": "pending"}},
    ):
        assert not job_status.is_valid({"response": {**SEED_EXAMPLE["response"], **breach}}), breach
    said = {
        "kind": "deliveryservice.regenerate",
        "labels": {"env": "prod", "k8s.io/team": "cdn"},
        "progress": 62.5,
        "result": {"any": ["JSON", None]},
        "error": {"code": "lost", "details": None},
        "cancel_requested_at": "2021-02-18T17:14:00.000000Z",
        "notify": {"url": "https://hooks.example.com/jobs", "state": "failed", "attempts": 24},
    }
    job_status.validate({"response": {**SEED_EXAMPLE["response"], **said}})
    created = validator("JobCreated")
    alert = {
        "text": "Async job has started. Status updates can be found here: /api/5.0/async_status/1",
        "level": "success",
    }
    created.validate({"alerts": [alert], **SEED_EXAMPLE})
    assert not created.is_valid({"alerts": [alert], "response": finished})
    errors = validator("ErrorAlerts")
    errors.validate({"alerts": [{"text": "Not Found", "level": "error"}]})
    for breach in ({"alerts": []}, {"alerts": [{"text": "x", "level": "success"}]}, {"alerts": [], "response": 1}):
        assert not errors.is_valid(breach), breach


def test_the_timeline_entry_is_derived_from_the_event_wire_model() -> None:
    entry = DOCUMENT["components"]["schemas"]["JobEvent"]
    assert entry["properties"]["type"]["enum"] == list(typing.get_args(events.EventType))
    assert set(entry["properties"]) == set(events.wire_schema()["properties"]) - {"job_id"} | {"received_at"}


def test_an_event_type_or_field_added_to_the_wire_model_changes_the_document_by_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Retry(pydantic.BaseModel):
        attempt: int

    class Extended(events._Wire):  # noqa: SLF001 - the model as a later version of the contract states it
        type: Literal["progress", "succeeded", "failed", "cancel_requested", "retrying"]  # type: ignore[assignment]
        eta_s: Annotated[float, pydantic.Field(ge=0, le=100)] | None = None
        retry: Retry | None = None

    monkeypatch.setattr(events, "_Wire", Extended)
    document = openapi.document(api_app.SERVED_VERSIONS)
    schemas = document["components"]["schemas"]
    entry = schemas["JobEvent"]
    assert entry["properties"]["type"]["enum"] == ["progress", "succeeded", "failed", "cancel_requested", "retrying"]
    assert {"eta_s", "retry"} <= set(entry["properties"]) and not {"eta_s", "retry"} & set(entry["required"])
    assert "Retry" in schemas  # a model a field is made of is a component of its own
    validate = jsonschema_rs.Draft202012Validator(
        {"$ref": "#/components/schemas/JobEvent", "components": document["components"]}
    )
    at = "2021-02-18T17:14:00.000000Z"
    plain = {
        "event_id": "3f1c8a52-7b4e-4c1d-9a0e-2b6f5d8c9e01",
        "type": "progress",
        "occurred_at": at,
        "received_at": at,
        "seq": 0,
        "message": None,
    }
    validate.validate(plain)  # an entry without the new fields is as valid as before
    validate.validate({**plain, "type": "retrying", "eta_s": 50, "retry": {"attempt": 2}})
    assert not validate.is_valid({**plain, "eta_s": 101})
    assert not validate.is_valid({**plain, "retry": {"reason": "lost"}})
    assert DOCUMENT["components"]["schemas"]["JobEvent"] != entry  # the real model has none of them


def test_the_timeline_entry_states_section_11s_fields() -> None:
    validate = validator("JobEvent")
    at = "2021-02-18T17:14:00.000000Z"
    plain = {"event_id": "3f1c8a52-7b4e-4c1d-9a0e-2b6f5d8c9e01", "type": "failed", "occurred_at": at}
    plain |= {"received_at": at, "seq": 0, "message": None}
    validate.validate({**plain, "progress": 0, "error": {"code": "lost", "details": {"a": [1]}}})
    validate.validate({**plain, "type": "succeeded", "result": None})
    for breach in ({"progress": 100.5}, {"error": {"code": "LOST"}}, {"error": {"details": 1}}, {"type": "paused"}):
        assert not validate.is_valid({**plain, **breach}), breach


def _new_job(document: dict[str, Any]) -> Any:
    return jsonschema_rs.Draft202012Validator(
        {"$ref": "#/components/schemas/NewJob", "components": document["components"]}
    )


def test_the_document_says_which_notify_urls_this_server_takes() -> None:
    # Off (the default): no notify_url at all is valid, so that no generated request expects a 202.
    off = _new_job(DOCUMENT)
    assert off.is_valid({"message": "x"})
    for url in ("https://hooks.example.com/jobs", "", None):
        assert not off.is_valid({"notify_url": url}), url
    allowed = webhooks.AllowList.parse("https://*.example.com,http://127.0.0.1:8080")
    on = _new_job(openapi.document(api_app.SERVED_VERSIONS, allowed))
    for url in ("https://hooks.example.com/jobs?team=ops", "HTTPS://Hooks.Example.com:443", "http://127.0.0.1:8080"):
        assert on.is_valid({"notify_url": url}), url
        webhooks.check_notify_url(url, allowed)
    for url in (
        "https://example.com/x",
        "http://127.0.0.1:8081/",
        "https://u@a.example.com",
        "https://a.example.com#x",
    ):
        assert not on.is_valid({"notify_url": url}), url
        with pytest.raises(ValueError, match="notify_url"):
            webhooks.check_notify_url(url, allowed)
