"""The HTTP API in process (falcon.testing) over real SQLite and PostgreSQL databases."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time

import argon2
import falcon.testing
import jwt
import pytest
import sqlalchemy as sa

from api.app import Deps, create_app
from api.revocations import RevokedTokens
from tests.conftest import TEST_SECRET
from tests.polling import poll_until
from tests.spec_texts import NOT_IMPLEMENTED
from tracker import auth, events
from tracker.config import Settings
from tracker.store import JobStore, make_engine, open_job_store
from tracker.store.tables import async_status, async_status_lease
from tracker.users import LoginLimits, LoginThrottle, TokenRevocations, UserStore

PASSWORD = "correct horse battery staple"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
FIELDS = ["id", "status", "start_time", "end_time", "message"]
# Cheap hashes keep the tests quick; production uses argon2's defaults.
FAST_PASSWORDS = auth.Passwords(argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


class Clock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Api:
    client: falcon.testing.TestClient
    tokens: auth.Tokens
    users: UserStore
    jobs: JobStore
    clock: Clock
    settings: Settings

    def bearer(self, username: str) -> dict[str, str]:
        user = self.users.get(username)
        assert user is not None, username
        return {"Authorization": f"Bearer {self.tokens.issue(username, user.account_id)}"}

    def login(self, username: str, password: str = PASSWORD, remote_addr: str = "10.0.0.1") -> falcon.testing.Result:
        return self.client.simulate_post(
            "/api/5.0/user/login", json={"u": username, "p": password}, remote_addr=remote_addr
        )


def build(settings: Settings, engine: sa.Engine, users: UserStore, jobs: JobStore | None = None) -> Api:
    tokens = auth.Tokens(settings.secret or "", settings.token_ttl_s)
    clock = Clock()
    jobs = jobs or open_job_store(engine)
    deps = Deps(
        jobs=jobs,
        users=users,
        throttle=LoginThrottle(engine, LoginLimits.of(settings)),
        tokens=tokens,
        settings=settings,
        clock=clock,
        # As get_app makes it, without the row cache's listener: each request reads what is new.
        revoked=RevokedTokens(TokenRevocations(engine), open_job_store(engine).change_counter()),
    )
    return Api(falcon.testing.TestClient(create_app(deps)), tokens, users, jobs, clock, settings)


def assert_alert(result: falcon.testing.Result, status: int, text: str) -> None:
    assert result.status_code == status, result.text
    assert result.headers["content-type"] == "application/json"
    assert result.json == {"alerts": [{"text": text, "level": "error"}]}


def test_login_sets_session_cookies_that_authenticate(api: Api) -> None:
    result = api.login("ops")
    assert result.status_code == 200
    assert result.json == {"alerts": [{"text": "Successfully logged in.", "level": "success"}]}
    cookies = result.cookies
    assert cookies["access_token"].value == cookies["mojolicious"].value
    for cookie in cookies.values():
        assert (cookie.http_only, cookie.path, cookie.max_age, cookie.secure, cookie.same_site) == (
            True,
            "/",
            api.settings.token_ttl_s,
            False,
            "Strict",
        )
    assert api.tokens.verify(cookies["access_token"].value).username == "ops"

    created = api.client.simulate_post(
        "/api/5.0/async_status", cookies={"access_token": cookies["access_token"].value}, json={}
    )
    assert created.status_code == 202
    got = api.client.simulate_get(created.headers["location"], cookies={"mojolicious": cookies["mojolicious"].value})
    assert got.status_code == 200
    assert got.json["response"]["id"] == created.json["response"]["id"]


def test_login_cookies_are_secure_when_configured(settings: Settings, engine: sa.Engine, users: UserStore) -> None:
    api = build(settings.with_(secure_cookies=True), engine, users)
    result = api.login("admin")
    assert result.status_code == 200
    assert all(cookie.secure for cookie in result.cookies.values())


def test_login_refusals(api: Api) -> None:
    post = api.client.simulate_post
    malformed = post("/api/5.0/user/login", body='{"u": "ops", "p":', headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json["alerts"][0]["text"].startswith("Could not parse JSON body")
    for body in (
        {},
        {"u": "ops"},
        {"p": PASSWORD},
        {"u": "", "p": PASSWORD},
        {"u": "ops", "p": ""},
        {"u": 7, "p": PASSWORD},
        {"u": "ops", "p": None},
    ):
        assert_alert(post("/api/5.0/user/login", json=body), 400, "username and password are required")
    assert_alert(post("/api/5.0/user/login"), 400, "username and password are required")
    assert_alert(post("/api/5.0/user/login", json=["ops", PASSWORD]), 400, "the request body must be a JSON object")
    wrong = api.login("ops", "wrong")
    assert_alert(wrong, 401, "Invalid username or password.")
    assert wrong.headers["www-authenticate"] == 'Bearer realm="tracker"'  # as every 401
    assert_alert(api.login("nobody"), 401, "Invalid username or password.")
    assert_alert(api.login("x" * 500), 401, "Invalid username or password.")
    assert_alert(api.login("o\x00ps"), 401, "Invalid username or password.")


def test_login_is_throttled_per_user_at_each_address(settings: Settings, engine: sa.Engine, users: UserStore) -> None:
    api = build(settings.with_(login_max_failures=2, login_lockout_s=60), engine, users)
    for _ in range(2):
        assert api.login("ops", "wrong", remote_addr="10.0.0.1").status_code == 401
    locked = api.login("ops", PASSWORD, remote_addr="10.0.0.1")  # even the right password
    assert locked.status_code == 429
    assert locked.headers["content-type"] == "application/json"
    seconds = int(locked.headers["retry-after"])
    assert 0 < seconds <= 60
    assert locked.json["alerts"] == [
        {"text": f"too many failed login attempts; try again in {seconds} seconds", "level": "error"}
    ]
    # The others at that address, and the user elsewhere, are not locked (tests/integration/test_attacks.py).
    assert api.login("admin", PASSWORD, remote_addr="10.0.0.1").status_code == 200
    assert api.login("ops", PASSWORD, remote_addr="10.0.0.2").status_code == 200


def test_logout_clears_the_cookies(api: Api) -> None:
    token = api.login("ops").cookies["access_token"].value
    result = api.client.simulate_post(
        "/api/5.0/user/logout", cookies={"access_token": token}, headers={"Content-Type": "application/json"}
    )
    assert result.status_code == 200
    assert result.json == {"alerts": [{"text": "You are logged out.", "level": "success"}]}
    for name in ("access_token", "mojolicious"):
        cookie = result.cookies[name]
        assert (cookie.value, cookie.max_age, cookie.path, cookie.http_only) == ("", 0, "/", True)
    assert_alert(api.client.simulate_post("/api/5.0/user/logout"), 401, "unauthorized, please log in.")


def test_create_job_answers_202_with_its_location(api: Api) -> None:
    result = api.client.simulate_post("/api/4.1/async_status", headers=api.bearer("ops"))
    assert result.status_code == 202
    job = result.json["response"]
    location = f"/api/4.1/async_status/{job['id']}"
    assert result.headers["location"] == location
    assert result.json["alerts"] == [
        {"text": f"Async job has started. Status updates can be found here: {location}", "level": "success"}
    ]
    assert list(job) == FIELDS
    assert job["id"] >= 1
    assert (job["status"], job["end_time"], job["message"]) == ("PENDING", None, "Async job has started.")
    assert TIME.fullmatch(job["start_time"])


def test_create_job_messages(api: Api) -> None:
    def create(**kwargs: object) -> falcon.testing.Result:
        return api.client.simulate_post("/api/5.0/async_status", headers=api.bearer("admin"), **kwargs)

    assert create(json={"message": "rebuilding caches"}).json["response"]["message"] == "rebuilding caches"
    assert create(json={"message": None}).json["response"]["message"] == "Async job has started."
    assert create(json={}).json["response"]["message"] == "Async job has started."
    assert create(json={"message": "x" * 4096}).status_code == 202
    for body, text in (
        (["x"], "the request body must be a JSON object"),
        ({"message": 5}, "'message' must be a string or null"),
        ({"message": "x" * 4097}, "'message' must be at most 4096 characters, not 4097"),
        ({"message": "a\x00b"}, "'message' must not contain NUL characters"),
    ):
        assert_alert(create(json=body), 400, text)
    malformed = create(body="{nope")  # no Content-Type: JSON is assumed
    assert malformed.status_code == 400
    assert malformed.headers["content-type"] == "application/json"


def _limits_of(api: Api, job_id: int) -> tuple[float | None, int | None]:
    """The job's timeout_s (from its deadline) and heartbeat lease as stored; None where there is none."""
    with api.jobs.engine.connect() as conn:
        start, deadline = conn.execute(
            sa.select(async_status.c.start_time, async_status.c.deadline_at).where(async_status.c.id == job_id)
        ).one()
        lease = conn.execute(
            sa.select(async_status_lease.c.heartbeat_timeout_s).where(async_status_lease.c.job_id == job_id)
        ).scalar()
    return (None if deadline is None else (deadline - start).total_seconds()), lease


def test_create_job_takes_a_timeout_and_a_heartbeat_lease(api: Api) -> None:
    def create(body: dict[str, object]) -> falcon.testing.Result:
        return api.client.simulate_post("/api/5.0/async_status", headers=api.bearer("ops"), json=body)

    result = create({"message": "Deploying.", "timeout_s": 3600, "heartbeat_timeout_s": 30})
    assert result.status_code == 202
    assert list(result.json["response"]) == FIELDS  # the answer is Traffic Ops' as ever
    assert _limits_of(api, result.json["response"]["id"]) == (3600, 30)
    assert _limits_of(api, create({}).json["response"]["id"]) == (86400, None)  # the defaults
    assert _limits_of(api, create({"heartbeat_timeout_s": 2592000}).json["response"]["id"]) == (86400, 2592000)
    # JSON Schema's integer, as the OpenAPI document states it, includes a number with no fraction.
    assert _limits_of(api, create({"timeout_s": 60.0}).json["response"]["id"]) == (60, None)


@pytest.mark.parametrize("field", ["timeout_s", "heartbeat_timeout_s"])
@pytest.mark.parametrize("value", [0, -1, 2592001, 1.5, 0.0, "60", True, None, [60]])
def test_a_bad_timeout_is_refused_naming_the_field_and_creates_nothing(api: Api, field: str, value: object) -> None:
    with api.jobs.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(async_status)).scalar_one()
    result = api.client.simulate_post(
        "/api/5.0/async_status", headers=api.bearer("ops"), json={"message": "x", field: value}
    )
    assert_alert(result, 400, f"{field} must be an integer from 1 to 2592000")
    with api.jobs.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(async_status)).scalar_one() == before


def test_the_servers_defaults_apply_when_the_body_names_none(settings: Settings, engine: sa.Engine, users) -> None:
    api = build(settings.with_(job_timeout_s=600, heartbeat_timeout_s=20), engine, users)
    result = api.client.simulate_post("/api/5.0/async_status", headers=api.bearer("ops"))
    assert _limits_of(api, result.json["response"]["id"]) == (600, 20)


def test_create_job_takes_a_kind_and_labels_and_keeps_them(api: Api) -> None:
    body = {"kind": "deliveryservice.regenerate", "labels": {"env": "prod", "k8s.io/team": "cdn", "empty": ""}}
    result = api.client.simulate_post("/api/5.0/async_status", headers=api.bearer("ops"), json=body)
    assert result.status_code == 202
    created = result.json["response"]
    assert list(created) == [*FIELDS, "kind", "labels"]
    assert created["labels"] == {"empty": "", "env": "prod", "k8s.io/team": "cdn"}
    assert list(created["labels"]) == ["empty", "env", "k8s.io/team"]  # by key, whatever order they came in
    read = api.client.simulate_get(f"/api/5.0/async_status/{created['id']}", headers=api.bearer("ops"))
    assert read.json["response"] == created
    # no labels at all is no labels: the answer is Traffic Ops' own
    plain = api.client.simulate_post("/api/5.0/async_status", headers=api.bearer("ops"), json={"labels": {}})
    assert list(plain.json["response"]) == FIELDS


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"kind": ""}, "kind must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
        ({"kind": "k" * 65}, "kind must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
        ({"kind": "a b"}, "kind must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
        ({"kind": None}, "kind must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
        ({"kind": 7}, "kind must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
        ({"labels": None}, "labels must be an object of at most 16 pairs"),
        ({"labels": [["env", "prod"]]}, "labels must be an object of at most 16 pairs"),
        ({"labels": {f"k{n}": "v" for n in range(17)}}, "labels must be an object of at most 16 pairs, not 17"),
        (
            {"labels": {"Env": "prod"}},
            "labels key 'Env' must be 1 to 63 characters of a-z 0-9 . _ / -, starting and ending with a letter "
            "or digit",
        ),
        ({"labels": {"env-": "prod"}}, "labels key 'env-' must be 1 to 63 characters"),
        ({"labels": {"env": 1}}, "labels value of 'env' must be a string of at most 256 characters"),
        ({"labels": {"env": "v" * 257}}, "labels value of 'env' must be a string of at most 256 characters"),
        ({"labels": {"env": "a\x00b"}}, "labels value of 'env' must hold neither NUL nor a lone surrogate"),
    ],
)
def test_a_bad_kind_or_label_is_refused_naming_it_and_creates_nothing(api: Api, body: dict, text: str) -> None:
    with api.jobs.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(async_status)).scalar_one()
    result = api.client.simulate_post("/api/5.0/async_status", headers=api.bearer("ops"), json=body)
    assert result.status_code == 400
    assert result.json["alerts"][0]["text"].startswith(text)
    with api.jobs.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(async_status)).scalar_one() == before


def test_a_job_says_what_its_events_say_in_get_the_list_and_the_timeline(api: Api) -> None:
    made = api.jobs.create_job("created", kind="export", labels=(("env", "prod"),))
    start = made.start_time
    progress = events.new_event(made.id, "progress", None, progress=40, occurred_at=start)
    cancel = events.new_event(made.id, "cancel_requested", "stop", occurred_at=start + dt.timedelta(seconds=1))
    failed = events.new_event(
        made.id,
        "failed",
        "gave up",
        error_code="disk_full",
        error_details={"free": 0, "é": [1.5, None]},
        occurred_at=start + dt.timedelta(seconds=2),
    )
    applied = api.jobs.apply([progress, cancel, failed])
    assert [(e.job_id, e.kind, e.status) for e in applied.ended] == [(made.id, "export", "FAILED")]
    headers = api.bearer("ops")
    row = api.client.simulate_get(f"/api/5.0/async_status/{made.id}", headers=headers).json["response"]
    assert {key: row[key] for key in list(row)[5:]} == {
        "kind": "export",
        "labels": {"env": "prod"},
        "progress": 40,
        "error": {"code": "disk_full", "details": {"free": 0, "é": [1.5, None]}},
        "cancel_requested_at": cancel.to_wire()["occurred_at"],
    }
    listed = api.client.simulate_get("/api/5.0/async_status?status=FAILED", headers=headers).json["response"]
    assert [job for job in listed if job["id"] == made.id] == [row]
    timeline = api.client.simulate_get(f"/api/5.0/async_status/{made.id}/events", headers=headers).json["response"]
    assert [(e["type"], e.get("progress"), e.get("error")) for e in timeline] == [
        ("progress", 40, None),
        ("cancel_requested", None, None),
        ("failed", None, {"code": "disk_full", "details": {"free": 0, "é": [1.5, None]}}),
    ]
    done = api.jobs.create_job()
    api.jobs.apply([events.new_event(done.id, "succeeded", None, progress=100, result={"rows": 3, "files": []})])
    row = api.client.simulate_get(f"/api/5.0/async_status/{done.id}", headers=headers)
    assert row.text.endswith('"progress":100,"result":{"rows":3,"files":[]}}}')


def test_get_job_in_traffic_ops_format(api: Api) -> None:
    job_id = api.jobs.create_job().id
    result = api.client.simulate_get(f"/api/5.0/async_status/{job_id}", headers=api.bearer("ops"))
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/json"
    assert result.text.startswith('{"response":{"id":')
    job = result.json["response"]
    assert list(job) == FIELDS
    assert (job["id"], job["status"], job["end_time"]) == (job_id, "PENDING", None)
    assert TIME.fullmatch(job["start_time"])

    finished = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    api.jobs.apply([events.new_event(job_id, "succeeded", "all done", occurred_at=finished)])
    padded = f"+{job_id:05d}"  # Go's ParseInt takes a sign and leading zeros
    job = api.client.simulate_get(f"/api/4.0/async_status/{padded}", headers=api.bearer("admin")).json["response"]
    assert (job["status"], job["message"]) == ("SUCCEEDED", "all done")
    assert job["end_time"] == finished.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_get_job_errors(api: Api) -> None:
    headers = api.bearer("ops")
    for text in ("abc", "1.5", "1e3", "0x10", "9223372036854775808", "-9223372036854775809", "%201"):
        result = api.client.simulate_get(f"/api/5.0/async_status/{text}", headers=headers)
        assert_alert(result, 400, "getting integer parameters: parameter 'id' not an integer")
    for text in ("0", "-1", "-9223372036854775808", "424242", "9223372036854775807"):
        assert_alert(api.client.simulate_get(f"/api/5.0/async_status/{text}", headers=headers), 404, "Not Found")
    # Who is asking is settled before what is asked.
    assert_alert(api.client.simulate_get("/api/5.0/async_status/abc"), 401, "unauthorized, please log in.")
    assert_alert(
        api.client.simulate_get("/api/5.0/async_status/abc", headers=api.bearer("viewer")),
        403,
        "missing required Permissions: ASYNC-STATUS:READ",
    )


def test_versions_and_unknown_paths(api: Api) -> None:
    headers = api.bearer("ops")
    job_id = api.jobs.create_job().id
    for version in ("4.0", "4.1", "5.0"):
        assert api.client.simulate_get(f"/api/{version}/async_status/{job_id}", headers=headers).status_code == 200
    for version in ("4.2", "4.10", "5.1"):
        assert_alert(
            api.client.simulate_get(f"/api/{version}/async_status/{job_id}", headers=headers), 501, NOT_IMPLEMENTED
        )
        assert_alert(api.client.simulate_post(f"/api/{version}/user/login"), 501, NOT_IMPLEMENTED)
    for path in (
        "/api/3.0/async_status/1",
        "/api/6.0/async_status/1",
        "/api/abc/async_status/1",
        "/api/4.01/async_status/1",
        "/api/5.0/nothing",
        "/api/5.0/async_status/1/more",
        "/api",
        "/index.html",  # the dashboard's page is served at / only
        "/static/dashboard.js",
    ):
        result = api.client.simulate_get(path, headers={**headers, "Accept": "text/html"})
        assert_alert(result, 404, f"The requested path '{path}' does not exist.")


def test_unsupported_methods_are_405_with_allow(api: Api) -> None:
    for method, path, allowed in (
        ("DELETE", "/api/5.0/async_status/1", "GET"),
        ("PUT", "/api/5.0/async_status", "POST"),
        ("GET", "/api/4.0/user/login", "POST"),
    ):
        result = api.client.simulate_request(method, path)
        assert_alert(result, 405, f"method {method} is not allowed on {path}")
        assert allowed in result.headers["allow"]


def test_read_only_users_are_forbidden(api: Api) -> None:
    headers = api.bearer("viewer")
    assert_alert(
        api.client.simulate_get("/api/5.0/async_status/1", headers=headers),
        403,
        "missing required Permissions: ASYNC-STATUS:READ",
    )
    assert_alert(
        api.client.simulate_post("/api/5.0/async_status", headers=headers),
        403,
        "missing required Permissions: ASYNC-STATUS:CREATE",
    )


def test_bad_credentials_are_refused(api: Api) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    admin = api.users.get("admin")
    ops = api.users.get("ops")
    assert admin is not None and ops is not None
    claims = {"sub": "admin", "acct": admin.account_id, "iat": now, "exp": now + 600, "jti": "x" * 32}
    forged = auth.Tokens("another-secret-" + "z" * 40, 600).issue("admin", admin.account_id)
    unsigned = jwt.encode(claims, None, algorithm="none")
    expired = api.tokens.issue("admin", admin.account_id, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=7))
    ghost = api.tokens.issue("ghost", admin.account_id)  # validly signed, but no such user
    not_its_account = api.tokens.issue("admin", ops.account_id)
    # As every token issued before accounts had ids: refused, so everyone logs in once after the upgrade.
    no_account = jwt.encode({key: value for key, value in claims.items() if key != "acct"}, TEST_SECRET, "HS256")
    cut = api.tokens.issue("admin", admin.account_id)[:-2]
    for token in (forged, unsigned, expired, ghost, not_its_account, no_account, "garbage", cut):
        for credentials in (
            {"headers": {"Authorization": f"Bearer {token}"}},
            {"cookies": {"access_token": token}},
            {"cookies": {"mojolicious": token}},
        ):
            result = api.client.simulate_get("/api/5.0/async_status/1", **credentials)
            assert_alert(result, 401, "unauthorized, please log in.")
    for headers in ({}, {"Authorization": "Basic YWRtaW46cGFzcw=="}, {"Authorization": "Bearer "}):
        assert_alert(
            api.client.simulate_post("/api/5.0/async_status", headers=headers), 401, "unauthorized, please log in."
        )


def test_deleted_users_are_refused_once_the_cache_expires(api: Api) -> None:
    headers = api.bearer("ops")
    job_id = api.jobs.create_job().id
    assert api.client.simulate_get(f"/api/5.0/async_status/{job_id}", headers=headers).status_code == 200
    assert api.users.remove("ops")
    api.clock.now += api.settings.user_cache_s + 0.1
    assert api.settings.user_cache_s < 60
    assert_alert(
        api.client.simulate_get(f"/api/5.0/async_status/{job_id}", headers=headers), 401, "unauthorized, please log in."
    )


def test_database_outage_is_503(settings: Settings, engine: sa.Engine, users: UserStore) -> None:
    # Jobs behind a port where nothing listens; users on the real database so auth passes.
    dead = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none")
    api = build(settings, engine, users, jobs=open_job_store(dead))
    result = api.client.simulate_get("/api/5.0/async_status/1", headers=api.bearer("ops"))
    assert_alert(result, 503, "database unavailable, try again later")
    assert result.headers["retry-after"]
    dead.dispose()


def test_ping_answers_without_credentials(api: Api) -> None:
    result = api.client.simulate_get("/api/5.0/ping")
    assert result.status_code == 200
    assert result.json == {"ping": "pong"}


def test_a_deleted_users_token_does_not_work_for_a_new_account_of_the_same_name(api: Api) -> None:
    old_token = api.bearer("ops")
    issued_in = int(time.time())  # read after issuing: at or after the token's second
    job_id = api.jobs.create_job().id
    assert api.client.simulate_get(f"/api/5.0/async_status/{job_id}", headers=old_token).status_code == 200
    assert api.users.remove("ops")
    # Tokens carry whole seconds: the new account must be created in a later one than the token.
    poll_until(lambda: int(time.time()) > issued_in, 2, "the next whole second")
    api.users.add("ops", "operations", PASSWORD)
    api.clock.now += api.settings.user_cache_s + 0.1
    assert_alert(
        api.client.simulate_get(f"/api/5.0/async_status/{job_id}", headers=old_token),
        401,
        "unauthorized, please log in.",
    )
    assert api.client.simulate_get(f"/api/5.0/async_status/{job_id}", headers=api.bearer("ops")).status_code == 200


def _recreate_within_one_second(api: Api, username: str) -> str:
    """Log ``username`` in, delete the account and create one of the same name, all within one
    whole second (as ``iat`` counts); the first account's token."""
    for _ in range(5):
        poll_until(lambda: time.time() % 1 < 0.5, 2, "the first half of a second")
        second = int(time.time())
        token = api.login(username).cookies["access_token"].value
        assert api.users.remove(username)
        api.users.add(username, "operations", PASSWORD)
        if int(time.time()) == second:
            return token
    raise AssertionError("could not log in, delete and re-create an account within one second")


def test_a_token_does_not_outlive_its_account_even_within_the_same_second(api: Api) -> None:
    """issue 24 (4): a token names an account, not a name: an account deleted and made again in the
    same second (all ``iat`` holds) is another account, and the first one's token is not its."""
    job_id = api.jobs.create_job().id
    url = f"/api/5.0/async_status/{job_id}"
    old_token = _recreate_within_one_second(api, "ops")
    api.clock.now += api.settings.user_cache_s + 0.1  # this process forgets the deleted account
    for credentials in (
        {"headers": {"Authorization": f"Bearer {old_token}"}},
        {"cookies": {"access_token": old_token}},
        {"cookies": {"mojolicious": old_token}},
    ):
        assert_alert(api.client.simulate_get(url, **credentials), 401, "unauthorized, please log in.")
    new_token = api.login("ops").cookies["access_token"].value
    assert api.client.simulate_get(url, headers={"Authorization": f"Bearer {new_token}"}).status_code == 200


def test_a_new_accounts_token_works_at_once_where_the_old_account_is_remembered(api: Api) -> None:
    """The process may still remember the deleted account (for TRACKER_USER_CACHE_S): a token
    issued after it looked makes it look again, rather than refuse the new account's token."""
    job_id = api.jobs.create_job().id
    url = f"/api/5.0/async_status/{job_id}"
    old_token = api.login("ops").cookies["access_token"].value
    assert api.client.simulate_get(url, headers={"Authorization": f"Bearer {old_token}"}).status_code == 200
    poll_until(lambda: time.time() % 1 < 0.5, 2, "the first half of a second")  # not the old token's second
    time.sleep(1)
    assert api.users.remove("ops")
    api.users.add("ops", "operations", PASSWORD)
    new_token = api.login("ops").cookies["access_token"].value
    assert api.client.simulate_get(url, headers={"Authorization": f"Bearer {new_token}"}).status_code == 200


JSON = {"Content-Type": "application/json"}


def credentials_of_token(token: str) -> list[dict[str, dict[str, str]]]:
    """The three ways to present a token: as Bearer, and as either cookie."""
    return [
        {"headers": {"Authorization": f"Bearer {token}"}},
        {"cookies": {"access_token": token}},
        {"cookies": {"mojolicious": token}},
    ]


def test_logout_ends_the_token_in_every_process(settings: Settings, engine: sa.Engine, users: UserStore) -> None:
    """issue 24 (3): after a logout the same token answered 200 for its full 6 h, as Bearer and as
    either cookie. Two apps over one database stand for two API processes."""
    here, there = build(settings, engine, users), build(settings, engine, users)
    token = here.login("ops").cookies["access_token"].value
    another = here.login("ops").cookies["access_token"].value  # another session of the same user
    url = f"/api/5.0/async_status/{here.jobs.create_job().id}"
    for api in (here, there):
        for credentials in credentials_of_token(token):
            assert api.client.simulate_get(url, **credentials).status_code == 200  # known, verified, remembered
    logged_out = here.client.simulate_post("/api/5.0/user/logout", cookies={"access_token": token}, headers=JSON)
    assert logged_out.status_code == 200
    for api in (here, there):
        for credentials in credentials_of_token(token):
            assert_alert(api.client.simulate_get(url, **credentials), 401, "unauthorized, please log in.")
            assert_alert(
                api.client.simulate_post("/api/5.0/async_status", json={}, **credentials),
                401,
                "unauthorized, please log in.",
            )
        assert api.client.simulate_get(url, headers={"Authorization": f"Bearer {another}"}).status_code == 200
    assert_alert(
        there.client.simulate_post("/api/5.0/user/logout", cookies={"access_token": token}, headers=JSON),
        401,
        "unauthorized, please log in.",
    )
    # A Bearer client's logout ends its token the same way.
    assert (
        there.client.simulate_post("/api/5.0/user/logout", headers={"Authorization": f"Bearer {another}"}).status_code
        == 200
    )
    for api in (here, there):
        assert_alert(
            api.client.simulate_get(url, headers={"Authorization": f"Bearer {another}"}),
            401,
            "unauthorized, please log in.",
        )
