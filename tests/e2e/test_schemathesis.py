"""Schemathesis against a live ``tracker api``: no 5xx, and every answer as the OpenAPI document says."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from tests.e2e.live_api import PASSWORD, add_users, running_api

MAX_EXAMPLES = 30  # per operation and phase; about 15 s a backend on two cores
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "positive_data_acceptance",
        "missing_required_header",
        "unsupported_method",
        "ignored_auth",
        "use_after_free",
        "ensure_resource_availability",
    ]
)


# schemathesis's own list of what answers valid data, with the 400 of no filter but status.
CANCEL_MANY_ACCEPTED = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
# schemathesis's own list, with the refusals gunicorn makes before the app sees a request.
NEGATIVE_DATA_REFUSED = [
    "400",
    "401",
    "403",
    "404",
    "405",
    "406",
    "409",
    "414",
    "415",
    "422",
    "428",
    "429",
    "431",
    "5xx",
]

_MEANT_TO_REFUSE = {"POST /api/{version}/user/login"}

# Schemathesis calls the logout too, which ends the token it sends (issue 24, point 3): it logs in
# for its Bearer token, and again whenever one is refused (401, schemathesis's default retry_on).
_HOOKS = """
import http.client
import json
import os

import schemathesis


@schemathesis.auth()
class Login:
    def get(self, case, context):
        connection = http.client.HTTPConnection("127.0.0.1", int(os.environ["TRACKER_TEST_API_PORT"]), timeout=10)
        try:
            credentials = json.dumps({"u": "ops", "p": os.environ["TRACKER_TEST_PASSWORD"]})
            connection.request("POST", "/api/5.0/user/login", credentials, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        assert response.status == 200, response.status
        return response.getheader("Set-Cookie").split("access_token=", 1)[1].split(";", 1)[0]

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
"""


def _operations_warned_about(stdout: str) -> set[str]:
    """The operations listed in the WARNINGS section of schemathesis's report; empty if it lists none."""
    if "WARNINGS" not in stdout:
        return set()
    section = stdout.split("WARNINGS", 1)[1].split("SUMMARY", 1)[0]
    return {line.strip()[2:] for line in section.splitlines() if line.strip().startswith("- ")}


def test_the_live_api_keeps_its_openapi_contract(database_url: str, tmp_path: pathlib.Path) -> None:
    add_users(database_url, ops="operations")
    # Fuzzed logins fail by the hundred: a low limit with a short lockout gets 429s checked too,
    # without locking the run out for long.
    # Invalid query strings (the list's parameters) can outgrow gunicorn's request line: its 414
    # (or 431 for headers) is as much a refusal of bad input as a 400, and is documented as such.
    config = tmp_path / "schemathesis.toml"
    # Cancelling many needs one of the list's filters besides status (SPEC §12), which no OpenAPI
    # schema can say of query parameters: its 400 for none is expected of valid-looking requests.
    config.write_text(
        f"[checks.negative_data_rejection]\nexpected-statuses = {NEGATIVE_DATA_REFUSED}\n\n"
        '[[operations]]\ninclude-operation-id = "cancelJobs"\n'
        f"checks.positive_data_acceptance.expected-statuses = {CANCEL_MANY_ACCEPTED}\n"
    )
    (tmp_path / "tracker_logins.py").write_text(_HOOKS)
    limits = {"login_max_failures": "20", "login_max_failures_per_address": "20", "login_lockout_s": "2"}
    with running_api(database_url, tmp_path, **limits) as api:
        hooks = {
            "SCHEMATHESIS_HOOKS": "tracker_logins",
            "PYTHONPATH": str(tmp_path),
            "TRACKER_TEST_API_PORT": str(api.port),
            "TRACKER_TEST_PASSWORD": PASSWORD,
        }
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "run",
                f"{api.base_url}/api/5.0/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                str(MAX_EXAMPLES),
                # One worker: hypothesis on CPython 3.11 can trip over ast.parse in parallel threads.
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--request-timeout",
                "10",
                "--no-color",
            ],
            cwd=tmp_path,
            env={**os.environ, **hooks},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    if "No issues found" not in run.stdout:
        # Newer schemathesis warns of an operation that only ever answered 401/403 (or 429): the
        # login, whose fuzzed credentials are all wrong, is meant to. Any other warning fails.
        warned = _operations_warned_about(run.stdout)
        assert warned and warned <= _MEANT_TO_REFUSE, run.stdout[-20000:]
    log = api.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-20000:]
