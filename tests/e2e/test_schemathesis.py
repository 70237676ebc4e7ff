"""Schemathesis against a live ``tracker api``: no 5xx, and every answer as the OpenAPI document says."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from tests.e2e.live_api import add_users, running_api

MAX_EXAMPLES = 30  # per operation and phase; about 15 s a backend on two cores
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance",
    "negative_data_rejection", "positive_data_acceptance", "missing_required_header",
    "unsupported_method", "ignored_auth", "use_after_free", "ensure_resource_availability",
])


def test_the_live_api_keeps_its_openapi_contract(database_url: str, tmp_path: pathlib.Path) -> None:
    add_users(database_url, ops="operations")
    # Fuzzed logins fail by the hundred: a low limit with a short lockout gets 429s checked too,
    # without locking the run out for long.
    with running_api(database_url, tmp_path, login_max_failures="20", login_lockout_s="2") as api:
        token = api.login("ops")
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{api.base_url}/api/5.0/openapi.json",
             "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES),
             # One worker: hypothesis on CPython 3.11 can trip over ast.parse in parallel threads.
             "--workers", "1", "--header", f"Authorization: Bearer {token}",
             "--generation-database", "none", "--request-timeout", "10", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "No issues found" in run.stdout, run.stdout[-20000:]
    log = api.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-20000:]
