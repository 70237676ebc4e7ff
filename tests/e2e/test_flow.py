"""The whole system as processes: `tracker api` (gunicorn) and `tracker consume`, driven over HTTP."""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from bench.processes import environment
from tests.e2e.live_api import CHEAP_PASSWORDS, PASSWORD, running_api
from tests.processes import ConsumerProcess
from tracker.events import new_event
from tracker.publisher import Publisher
from tracker.users import UserStore

pytestmark = [pytest.mark.rabbitmq]

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class Http:
    """A tiny client keeping cookies, answering (status, headers, JSON body) for any status."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def call(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None, cookies: bool = True
    ):
        data = None if body is None else json.dumps(body).encode()
        # The base is the test's own http://127.0.0.1 server.
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})  # noqa: S310
        if method != "GET":  # as the dashboard does: a cookie session's writes must declare JSON (SPEC §2)
            request.add_header("Content-Type", "application/json")
        opener = self._opener if cookies else urllib.request.build_opener()
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.headers, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            assert exc.headers.get_content_type() == "application/json", "errors are JSON, never HTML"
            return exc.code, exc.headers, json.loads(exc.read())


def alert(body: dict) -> str:
    assert set(body) == {"alerts"} and body["alerts"][0]["level"] == "error", body
    return body["alerts"][0]["text"]


@pytest.fixture
def system(settings, engine, tmp_path):
    users = UserStore(engine, CHEAP_PASSWORDS)
    users.add("ops", "operations", PASSWORD)
    users.add("viewer", "read-only", PASSWORD)
    consumer = ConsumerProcess(environment(settings), tmp_path / "consumer.log").start()
    try:
        consumer.wait_ready()
        with running_api(settings.database_url, tmp_path, amqp_url=settings.amqp_url) as api:
            yield Http(api.base_url)
    finally:
        code, _ = consumer.terminate(timeout=15)
        assert code == 0, f"tracker consume exited with {code}:\n{consumer.tail()}"


def login(client: Http, username: str) -> None:
    status, _headers, body = client.call("POST", "/api/5.0/user/login", {"u": username, "p": PASSWORD})
    assert status == 200, body
    assert body == {"alerts": [{"text": "Successfully logged in.", "level": "success"}]}
    names = {cookie.name for cookie in client.cookies}
    assert {"mojolicious", "access_token"} <= names


def test_login_create_publish_and_read_until_succeeded(system: Http, settings):
    login(system, "ops")
    status, headers, body = system.call("POST", "/api/5.0/async_status", {"message": "Deploying."})
    assert status == 202
    job_id = body["response"]["id"]
    assert headers["Location"] == f"/api/5.0/async_status/{job_id}"
    assert body["alerts"][0]["text"] == (
        f"Async job has started. Status updates can be found here: /api/5.0/async_status/{job_id}"
    )

    status, _, body = system.call("GET", f"/api/5.0/async_status/{job_id}")
    assert status == 200
    assert list(body["response"]) == ["id", "status", "start_time", "end_time", "message"]
    assert body["response"]["status"] == "PENDING" and body["response"]["end_time"] is None
    assert TIME.fullmatch(body["response"]["start_time"])

    with Publisher(settings) as publisher, publisher.job(job_id) as job:
        job.progress("half way")
        job.final_message = "Deployed."
    published = time.monotonic()
    while True:
        status, _, body = system.call("GET", f"/api/4.0/async_status/{job_id}")
        if body["response"]["status"] != "PENDING" or time.monotonic() - published > 10:
            break
        time.sleep(0.01)
    row = body["response"]
    assert (row["status"], row["message"]) == ("SUCCEEDED", "Deployed.")
    assert TIME.fullmatch(row["end_time"]) and row["end_time"] >= row["start_time"]

    status, _, body = system.call("POST", "/api/5.0/user/logout")
    assert status == 200
    status, _, body = system.call("GET", f"/api/5.0/async_status/{job_id}")
    assert (status, alert(body)) == (401, "unauthorized, please log in.")


def test_bearer_and_either_cookie_authenticate(system: Http):
    login(system, "ops")
    token = next(cookie.value for cookie in system.cookies if cookie.name == "access_token")
    _, _, created = system.call("POST", "/api/5.0/async_status")
    path = f"/api/5.0/async_status/{created['response']['id']}"
    for headers in (
        {"Authorization": f"Bearer {token}"},
        {"Cookie": f"mojolicious={token}"},
        {"Cookie": f"access_token={token}"},
    ):
        status, _, body = system.call("GET", path, headers=headers, cookies=False)
        assert status == 200 and body["response"]["message"] == "Async job has started."


def test_errors_have_traffic_ops_statuses_and_alerts(system: Http):
    status, _, body = system.call("GET", "/api/5.0/async_status/1")
    assert (status, alert(body)) == (401, "unauthorized, please log in.")
    login(system, "ops")
    cases = [
        ("GET", "/api/5.0/async_status/abc", 400, "getting integer parameters: parameter 'id' not an integer"),
        (
            "GET",
            "/api/5.0/async_status/9223372036854775808",
            400,
            "getting integer parameters: parameter 'id' not an integer",
        ),
        ("GET", "/api/5.0/async_status/9223372036854775807", 404, "Not Found"),
        ("GET", "/api/5.0/async_status/0", 404, "Not Found"),
        ("GET", "/api/5.0/async_status/-3", 404, "Not Found"),
        ("GET", "/api/5.0/no_such_thing", 404, "The requested path '/api/5.0/no_such_thing' does not exist."),
        ("GET", "/api/3.0/async_status/1", 404, "The requested path '/api/3.0/async_status/1' does not exist."),
        (
            "GET",
            "/api/5.1/async_status/1",
            501,
            "The requested api version is not implemented by this server. If you are using a newer client with "
            "an older server, you will need to use an older client version or upgrade your server.",
        ),
        ("GET", "/api/4.2/async_status/1", 501, None),
    ]
    for method, path, want_status, want_alert in cases:
        status, _, body = system.call(method, path)
        assert status == want_status, (path, body)
        if want_alert is not None:
            assert alert(body) == want_alert
    status, headers, body = system.call("DELETE", "/api/5.0/async_status/1")
    assert status == 405 and "GET" in headers["Allow"] and alert(body)


def test_read_only_user_is_refused_with_403(system: Http):
    login(system, "viewer")
    status, _, body = system.call("GET", "/api/5.0/async_status/1")
    assert (status, alert(body)) == (403, "missing required Permissions: ASYNC-STATUS:READ")
    status, _, body = system.call("POST", "/api/5.0/async_status")
    assert (status, alert(body)) == (403, "missing required Permissions: ASYNC-STATUS:CREATE")


def test_wrong_password_is_401_and_missing_fields_400(system: Http):
    status, _, body = system.call("POST", "/api/5.0/user/login", {"u": "ops", "p": "wrong"})
    assert (status, alert(body)) == (401, "Invalid username or password.")
    status, _, body = system.call("POST", "/api/5.0/user/login", {"u": "ops"})
    assert (status, alert(body)) == (400, "username and password are required")


def _tracker(system: Http, settings, *argv: str) -> str:
    """Run the ``tracker`` command as a user of the system's API; its output (it must succeed)."""
    env = environment(settings, TRACKER_API_URL=system.base, TRACKER_API_USER="ops", TRACKER_PASSWORD=PASSWORD)
    done = subprocess.run(
        [sys.executable, "-m", "tracker.cli", *argv], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cli_creates_and_emits(system: Http, settings, engine):
    job_id = int(_tracker(system, settings, "jobs", "create", "From the CLI.").strip())
    _tracker(system, settings, "jobs", "emit", str(job_id), "failed", "It broke.")
    login(system, "ops")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, _, body = system.call("GET", f"/api/5.0/async_status/{job_id}")
        if body["response"]["status"] == "FAILED":
            break
        time.sleep(0.02)
    assert (body["response"]["status"], body["response"]["message"]) == ("FAILED", "It broke.")


def test_what_a_job_says_about_itself_goes_from_the_cli_and_the_worker_to_every_answer(system: Http, settings):
    """SPEC §11 end to end: kind and labels from `tracker jobs create`, progress and a result
    through RabbitMQ and `tracker consume`, seen in GET, the list and the timeline."""
    created = _tracker(
        system,
        settings,
        "jobs",
        "create",
        "Exporting.",
        "--kind",
        "export.csv",
        "--label",
        "env=prod",
        "--label",
        "team=cdn",
    )
    job_id = int(created.strip())
    with Publisher(settings) as publisher:
        publisher.publish(new_event(job_id, "progress", "half way", seq=1, progress=50))
        publisher.publish(new_event(job_id, "succeeded", "Exported.", seq=2, progress=100, result={"rows": 1200}))
    login(system, "ops")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, _, body = system.call("GET", f"/api/5.0/async_status/{job_id}")
        if body["response"]["status"] != "PENDING":
            break
        time.sleep(0.02)
    row = body["response"]
    assert list(row) == ["id", "status", "start_time", "end_time", "message", "kind", "labels", "progress", "result"]
    assert (row["status"], row["kind"], row["labels"]) == ("SUCCEEDED", "export.csv", {"env": "prod", "team": "cdn"})
    assert (row["progress"], row["result"]) == (100, {"rows": 1200})
    _, _, listed = system.call("GET", "/api/5.0/async_status?status=SUCCEEDED&orderby=id&sortOrder=desc&limit=5")
    assert row in listed["response"]
    _, _, timeline = system.call("GET", f"/api/5.0/async_status/{job_id}/events")
    assert [(e["type"], e.get("progress"), e.get("result")) for e in timeline["response"]] == [
        ("progress", 50, None),
        ("succeeded", 100, {"rows": 1200}),
    ]


def test_tracker_jobs_emit_sends_progress_a_result_and_an_error_code(system: Http, settings):
    """`tracker jobs emit … --progress/--result/--error-code` (SPEC §11) through RabbitMQ to the row."""
    done = int(_tracker(system, settings, "jobs", "create", "Exporting.", "--kind", "export.csv").strip())
    broken = int(_tracker(system, settings, "jobs", "create", "Copying.").strip())
    _tracker(system, settings, "jobs", "emit", str(done), "progress", "Half way.", "--progress", "50")
    _tracker(system, settings, "jobs", "emit", str(done), "succeeded", "--progress", "100", "--result", '{"rows":3}')
    _tracker(system, settings, "jobs", "emit", str(broken), "failed", "Disk full.", "--error-code", "disk_full")
    login(system, "ops")
    rows = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(rows) < 2:
        for job_id in (done, broken):
            _, _, body = system.call("GET", f"/api/5.0/async_status/{job_id}")
            if body["response"]["status"] != "PENDING":
                rows[job_id] = body["response"]
        time.sleep(0.02)
    assert {key: rows[done][key] for key in ("status", "message", "progress", "result")} == {
        "status": "SUCCEEDED",
        "message": "Half way.",
        "progress": 100,
        "result": {"rows": 3},
    }
    assert {key: rows[broken][key] for key in ("status", "message", "error")} == {
        "status": "FAILED",
        "message": "Disk full.",
        "error": {"code": "disk_full"},
    }
    env = environment(settings, TRACKER_API_URL=system.base)
    refused = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "jobs", "emit", str(done), "progress", "--result", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (refused.returncode, refused.stderr) == (2, "tracker: --result goes only with succeeded\n")


def test_a_cookie_session_acts_only_from_the_trackers_own_origin(system: Http):
    """SPEC §2 through gunicorn: the tracker's own origin is the scheme and Host the request came with."""
    login(system, "ops")
    own = system.base  # http://127.0.0.1:PORT
    other_port = re.sub(r":\d+$", ":1", own)
    status, _, body = system.call("POST", "/api/5.0/async_status", {}, headers={"Origin": other_port})
    assert (status, alert(body)) == (
        403,
        "refused: a cookie session is used and opened only from the tracker's own origin",
    )
    status, _, body = system.call("POST", "/api/5.0/async_status", {}, headers={"Origin": own})
    assert status == 202, body
    # A body the cookie session does not declare JSON: urllib's default type for one is a form's.
    request = urllib.request.Request(system.base + "/api/5.0/async_status", data=b"{}", method="POST")  # noqa: S310
    try:
        with system._opener.open(request, timeout=10):  # noqa: SLF001 - its cookies
            raise AssertionError("a form-typed body was accepted from a cookie session")
    except urllib.error.HTTPError as exc:
        assert exc.code == 415


def test_the_cli_cancels_jobs_by_id(system: Http, settings):
    """SPEC §12 from the shell: `tracker jobs cancel ID…` through the API; a finished job is refused (exit 1)."""
    first, second, done = (int(_tracker(system, settings, "jobs", "create").strip()) for _ in range(3))
    _tracker(system, settings, "jobs", "emit", str(done), "succeeded")
    said = _tracker(system, settings, "jobs", "cancel", str(first), str(second), "--message", "No longer needed.")
    assert [line.split()[:2] for line in said.splitlines()] == [[str(first), "PENDING"], [str(second), "PENDING"]]
    login(system, "ops")
    _, _, body = system.call("GET", f"/api/5.0/async_status/{first}/events")
    assert [(e["type"], e["message"]) for e in body["response"]] == [("cancel_requested", "No longer needed.")]
    deadline = time.monotonic() + 10
    while system.call("GET", f"/api/5.0/async_status/{done}")[2]["response"]["status"] == "PENDING":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    env = environment(settings, TRACKER_API_URL=system.base, TRACKER_API_USER="ops", TRACKER_PASSWORD=PASSWORD)
    refused = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "jobs", "cancel", str(done)], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert refused.stderr == f"tracker: job {done}: HTTP 409: job {done} has already finished: SUCCEEDED\n"
    neither = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "jobs", "cancel"], env=env, capture_output=True, text=True
    )
    assert neither.returncode == 2
    # by the list's filters: every PENDING job of the kind with the label, started before now
    for label in ("env=prod", "env=prod", "env=test"):
        _tracker(system, settings, "jobs", "create", "--kind", "cdn.purge", "--label", label)
    many = _tracker(
        system, settings, "jobs", "cancel", "--kind", "cdn.purge", "--label", "env=prod", "--started-before", "0s"
    )
    assert many == "requested: 2\n"
