"""The API's rules without I/O: envelope, id and version parsing, roles, error mapping over fakes."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import falcon
import falcon.testing
import pytest

from api import app as api_app
from api.reads import JobReads
from api.resources import parse_job_id
from api.waits import WaitRegistry
from tests import spec_texts
from tracker import auth, roles
from tracker.config import Settings
from tracker.envelope import alerts
from tracker.errors import JobNotFound, StoreUnavailable
from tracker.model import Job
from tracker.users import User

SECRET = "unit-secret-" + "y" * 40


class FakeJobs:
    def __init__(self, job: Job | None = None, error: Exception | None = None) -> None:
        self.job, self.error, self.asked = job, error, []

    def get_job(self, job_id: int) -> Job:
        self.asked.append(job_id)
        if self.error:
            raise self.error
        if self.job is None or self.job.id != job_id:
            raise JobNotFound(job_id)
        return self.job

    def statuses(self, ids: Sequence[int]) -> dict[int, str]:  # for the waits' poller
        return {self.job.id: self.job.status} if self.job is not None and self.job.id in ids else {}

    def change_counter(self) -> None:
        return None


class FakeUsers:
    def get(self, username: str) -> User | None:
        role = "read-only" if username == "viewer" else "operations"
        return User(username, role, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), account_id=username)


def client_over(jobs: FakeJobs, waits: WaitRegistry | None = None) -> tuple[falcon.testing.TestClient, dict[str, str]]:
    tokens = auth.Tokens(SECRET, 60)
    deps = api_app.Deps(
        jobs=jobs,
        users=FakeUsers(),
        throttle=None,
        tokens=tokens,  # type: ignore[arg-type]
        settings=Settings(secret=SECRET),
        reads=None if waits is None else JobReads(jobs, waits=waits),  # type: ignore[arg-type]
    )
    return falcon.testing.TestClient(api_app.create_app(deps)), {
        "Authorization": f"Bearer {tokens.issue('ops', 'ops')}"
    }


def assert_alert(result: falcon.testing.Result, status: int, text: str) -> None:
    assert result.status_code == status
    assert result.headers["content-type"] == "application/json"
    assert result.json == {"alerts": [{"text": text, "level": "error"}]}


def test_alerts_is_the_traffic_ops_envelope() -> None:
    assert alerts("boom") == {"alerts": [{"text": "boom", "level": "error"}]}
    assert alerts("done", "success") == {"alerts": [{"text": "done", "level": "success"}]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("007", 7),
        ("+5", 5),
        ("-3", -3),
        ("-0", 0),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
        ("0" * 5000 + "42", 42),
    ],
)
def test_parse_job_id_reads_go_integers(text: str, expected: int) -> None:
    assert parse_job_id(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "1.0",
        "1e3",
        " 1",
        "1 ",
        "1\n",
        "0x1f",
        "+",
        "--1",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit to Python's int(), not to Go's ParseInt
        "9223372036854775808",
        "-9223372036854775809",
        "1" * 5000,
    ],
)
def test_parse_job_id_refuses_the_rest(text: str) -> None:
    with pytest.raises(falcon.HTTPBadRequest) as raised:
        parse_job_id(text)
    assert raised.value.description == spec_texts.ID_NOT_INTEGER


@pytest.mark.parametrize(
    ("version", "later"),
    [
        ("4.2", True),
        ("4.10", True),
        ("5.1", True),
        ("4.02", True),
        ("4." + "9" * 5000, True),
        ("4.0", False),
        ("4.1", False),
        ("5.0", False),
        ("4.01", False),
        ("3.0", False),
        ("6.0", False),
        ("abc", False),
        ("5", False),
        ("5.1.0", False),
        ("", False),
        ("9" * 5000 + ".1", False),
    ],
)
def test_later_minor_versions_are_recognised(version: str, later: bool) -> None:
    assert api_app.is_later_version(version) is later


@pytest.mark.parametrize(
    ("role", "granted"),
    [
        ("admin", {roles.READ, roles.CREATE}),
        ("operations", {roles.READ, roles.CREATE}),
        ("read-only", set()),
        ("no-such-role", set()),
    ],
)
def test_roles_grant_their_permissions(role: str, granted: set[str]) -> None:
    for permission in (roles.READ, roles.CREATE):
        if permission in granted:
            roles.require(role, permission)
        else:
            with pytest.raises(roles.PermissionDenied):
                roles.require(role, permission)


def test_times_are_rendered_in_utc_with_six_digits() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    job = Job(
        3,
        "SUCCEEDED",
        dt.datetime(2021, 2, 18, 19, 13, 56, tzinfo=plus_two),
        dt.datetime(2021, 2, 18, 17, 14, 0, 5, tzinfo=dt.UTC),
        "done",
    )
    client, headers = client_over(FakeJobs(job))
    result = client.simulate_get("/api/5.0/async_status/3", headers=headers)
    assert result.status_code == 200
    assert result.text == (
        '{"response":{"id":3,"status":"SUCCEEDED","start_time":"2021-02-18T17:13:56.000000Z",'
        '"end_time":"2021-02-18T17:14:00.000005Z","message":"done"}}'
    )


def test_ids_below_one_are_not_looked_up() -> None:
    jobs = FakeJobs()
    client, headers = client_over(jobs)
    for text in ("0", "-7"):
        assert_alert(client.simulate_get(f"/api/5.0/async_status/{text}", headers=headers), 404, "Not Found")
    assert jobs.asked == []


def test_database_outage_is_503_with_retry_after() -> None:
    client, headers = client_over(FakeJobs(error=StoreUnavailable("OperationalError: connection refused")))
    result = client.simulate_get("/api/5.0/async_status/1", headers=headers)
    assert_alert(result, 503, "database unavailable, try again later")
    assert result.headers["retry-after"] == "5"


def test_unexpected_errors_are_500_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    client, headers = client_over(FakeJobs(error=RuntimeError("secret detail")))
    result = client.simulate_get("/api/5.0/async_status/1", headers={**headers, "Accept": "text/html"})
    assert_alert(result, 500, "Internal Server Error")
    assert "secret detail" not in result.text
    assert "secret detail" in caplog.text  # the operator still gets the traceback


@pytest.mark.parametrize("version", ["4.2", "5.1"])
def test_a_later_minor_version_answers_the_spec_text(version: str) -> None:
    client, headers = client_over(FakeJobs())
    result = client.simulate_get(f"/api/{version}/async_status/1", headers=headers)
    assert_alert(result, 501, spec_texts.NOT_IMPLEMENTED)
    assert_alert(client.simulate_post(f"/api/{version}/user/login"), 501, spec_texts.NOT_IMPLEMENTED)


SEED_START = dt.datetime(2021, 2, 18, 17, 13, 56, 352261, tzinfo=dt.UTC)


def test_a_job_that_says_nothing_of_section_11_is_answered_byte_for_byte_as_the_seed() -> None:
    client, headers = client_over(FakeJobs(Job(1, "PENDING", SEED_START, None, "Async job has started.")))
    for version in ("4.0", "4.1", "5.0"):
        answer = client.simulate_get(f"/api/{version}/async_status/1", headers=headers)
        assert answer.content == spec_texts.SEED_GET_BODY
    assert json.loads(spec_texts.SEED_RESPONSE_EXAMPLE) == json.loads(spec_texts.SEED_GET_BODY)
    # empty labels are not set either
    client, headers = client_over(FakeJobs(Job(1, "PENDING", SEED_START, None, "Async job has started.", None, ())))
    assert client.simulate_get("/api/5.0/async_status/1", headers=headers).content == spec_texts.SEED_GET_BODY


def test_section_11s_fields_follow_the_seeds_five_each_only_when_set() -> None:
    said = Job(
        1,
        "FAILED",
        SEED_START,
        SEED_START,
        None,
        "export",
        (("env", "prod"), ("a", "1")),
        50.0,
        None,
        "disk_full",
        '{"free":0,"f":1.5}',
        SEED_START,
    )
    client, headers = client_over(FakeJobs(said))
    answer = client.simulate_get("/api/5.0/async_status/1", headers=headers)
    assert list(answer.json["response"]) == [
        "id",
        "status",
        "start_time",
        "end_time",
        "message",
        "kind",
        "labels",
        "progress",
        "error",
        "cancel_requested_at",
    ]
    assert b'"progress":50,' in answer.content  # a whole number, without a fraction
    assert answer.json["response"]["labels"] == {"env": "prod", "a": "1"}
    assert answer.json["response"]["error"] == {"code": "disk_full", "details": {"free": 0, "f": 1.5}}
    assert answer.json["response"]["cancel_requested_at"] == "2021-02-18T17:13:56.352261Z"
    done = Job(1, "SUCCEEDED", SEED_START, SEED_START, None, progress=12.25, result_json='{"b":1,"a":[]}')
    client, headers = client_over(FakeJobs(done))
    body = client.simulate_get("/api/5.0/async_status/1", headers=headers).content
    assert body.endswith(b'"message":null,"progress":12.25,"result":{"b":1,"a":[]}}}')  # the kept text, as it is


def test_refusals_answer_the_spec_texts() -> None:
    job = Job(7, "PENDING", dt.datetime(2024, 1, 1, tzinfo=dt.UTC), None, "Async job has started.")
    client, headers = client_over(FakeJobs(job))
    get = client.simulate_get
    assert_alert(get("/api/5.0/nothing", headers=headers), 404, spec_texts.no_such_path("/api/5.0/nothing"))
    assert_alert(get("/api/5.0/async_status/x", headers=headers), 400, spec_texts.ID_NOT_INTEGER)
    assert_alert(get("/api/5.0/async_status/8", headers=headers), 404, spec_texts.NOT_FOUND)
    assert_alert(get("/api/5.0/async_status/9223372036854775807", headers=headers), 404, spec_texts.NOT_FOUND)
    assert_alert(get("/api/5.0/async_status/9223372036854775808", headers=headers), 400, spec_texts.ID_NOT_INTEGER)
    assert_alert(get("/api/5.0/async_status/7"), 401, spec_texts.UNAUTHORIZED)
    viewer = {"Authorization": f"Bearer {auth.Tokens(SECRET, 60).issue('viewer', 'viewer')}"}
    assert_alert(get("/api/5.0/async_status/7", headers=viewer), 403, spec_texts.MISSING_READ)
    assert get("/api/5.0/async_status/7", headers=headers).status_code == 200


def test_a_wait_beyond_the_cap_is_answered_at_once_without_preference_applied() -> None:
    job = Job(3, "SUCCEEDED", dt.datetime(2021, 2, 18, tzinfo=dt.UTC), dt.datetime(2021, 2, 19, tzinfo=dt.UTC), "done")
    waits = {"Prefer": "wait=5"}
    client, headers = client_over(FakeJobs(job), WaitRegistry(most=1))
    within = client.simulate_get("/api/5.0/async_status/3", headers={**headers, **waits})
    assert (within.status_code, within.headers["preference-applied"]) == (200, "wait=5")
    client, headers = client_over(FakeJobs(job), WaitRegistry(most=0))
    beyond = client.simulate_get("/api/5.0/async_status/3", headers={**headers, **waits})
    assert (beyond.status_code, beyond.text) == (200, within.text)  # the row, as a plain GET gives it
    assert "preference-applied" not in beyond.headers
    client, headers = client_over(FakeJobs(job), WaitRegistry(most=5, most_per_user=0))
    mine = client.simulate_get("/api/5.0/async_status/3", headers={**headers, **waits})
    assert "preference-applied" not in mine.headers


def test_every_answer_is_private_unsniffed_and_a_401_names_its_scheme(caplog: pytest.LogCaptureFixture) -> None:
    """issue 24 (8): a job's status is private and changes, so nothing may keep it, and no answer may
    be sniffed into another type; a 401 says how to authenticate (Bearer, never a browser's dialog)."""
    job = Job(7, "PENDING", dt.datetime(2024, 1, 1, tzinfo=dt.UTC), None, "Async job has started.")
    client, headers = client_over(FakeJobs(job))
    broken, broken_headers = client_over(FakeJobs(error=RuntimeError("boom")))
    answers = {
        "200": client.simulate_get("/api/5.0/async_status/7", headers=headers),
        "400": client.simulate_get("/api/5.0/async_status/x", headers=headers),
        "401": client.simulate_get("/api/5.0/async_status/7"),
        "404": client.simulate_get("/api/5.0/nothing"),
        "405": client.simulate_delete("/api/5.0/async_status/7"),
        "500": broken.simulate_get("/api/5.0/async_status/7", headers=broken_headers),
        "501": client.simulate_get("/api/5.1/async_status/7"),
        "login 400": client.simulate_post("/api/5.0/user/login"),
        "ping": client.simulate_get("/api/5.0/ping"),
        "healthz": client.simulate_get("/healthz"),
        "openapi": client.simulate_get("/api/5.0/openapi.json"),
    }
    for name, result in answers.items():
        assert (name, result.headers.get("x-content-type-options")) == (name, "nosniff")
        assert (name, result.headers.get("cache-control")) == (name, "no-store")
    assert answers["401"].headers["www-authenticate"] == 'Bearer realm="tracker"'
    assert "www-authenticate" not in answers["200"].headers
    # SPEC §2's bodies are unchanged, byte for byte.
    assert answers["200"].text == (
        '{"response":{"id":7,"status":"PENDING","start_time":"2024-01-01T00:00:00.000000Z",'
        '"end_time":null,"message":"Async job has started."}}'
    )
    assert answers["401"].text == '{"alerts":[{"text":"unauthorized, please log in.","level":"error"}]}'
    # The dashboard's files keep their own caching (revalidated, so a new release shows at once).
    page = client.simulate_get("/")
    assert (page.headers["cache-control"], page.headers["x-content-type-options"]) == ("no-cache", "nosniff")
