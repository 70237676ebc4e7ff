"""TRACKER_LOG_FORMAT=json on a real `tracker api`: every line of its output is one JSON object,
gunicorn's own included, and no password or secret is ever in it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TEST_SECRET
from tests.e2e.live_api import PASSWORD, add_users, running_api

pytestmark = [pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)]

WRONG_PASSWORD = "wrong-Pa55word-7d1f3c0e"


def test_json_logs_are_json_and_never_hold_a_password_or_the_secret(database_url, tmp_path):
    add_users(database_url, ops="operations")
    with running_api(database_url, tmp_path, log_format="json", log_level="DEBUG") as api:
        for username in ("ops", "nobody"):
            answer = api.request(
                "POST",
                "/api/5.0/user/login",
                json.dumps({"u": username, "p": WRONG_PASSWORD}).encode(),
                {"Content-Type": "application/json"},
            )
            assert answer.status == 401, answer
        token = api.login("ops")
        assert api.request("GET", "/api/5.0/async_status/1", headers={"Authorization": f"Bearer {token}"}).status
        assert api.send_raw(b"NOT HTTP AT ALL\r\n\r\n").status == 400  # gunicorn's own warning
    output = api.log()

    lines = output.splitlines()
    for line in lines:
        entry = json.loads(line)  # fails the test on the first line that is not JSON
        assert {"time", "level", "logger", "message"} <= set(entry), line
    loggers = {json.loads(line)["logger"] for line in lines}
    assert "gunicorn.error" in loggers, output  # gunicorn's start and stop lines came through as JSON
    for secret in (WRONG_PASSWORD, PASSWORD, TEST_SECRET):
        assert secret not in output
