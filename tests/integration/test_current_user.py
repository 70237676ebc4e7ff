"""GET /api/{version}/user/current: each role sees its own name, role and permissions; no token, a 401."""

from __future__ import annotations

import pytest

from tests.integration.test_api import Api, assert_alert
from tests.spec_texts import UNAUTHORIZED
from tests.unit.test_openapi import validator

CANCEL = "ASYNC-STATUS:CANCEL"
READ = "ASYNC-STATUS:READ"
CREATE = "ASYNC-STATUS:CREATE"


@pytest.mark.parametrize(
    ("username", "role", "permissions"),
    [
        ("admin", "admin", [CANCEL, CREATE, READ]),
        ("ops", "operations", [CANCEL, CREATE, READ]),
        ("viewer", "read-only", []),
    ],
)
def test_each_role_reads_itself(api: Api, username: str, role: str, permissions: list[str]) -> None:
    for version in ("4.0", "4.1", "5.0"):
        result = api.client.simulate_get(f"/api/{version}/user/current", headers=api.bearer(username))
        assert result.status_code == 200, result.text
        expected = {"username": username, "role": role, "localUser": True, "permissions": permissions}
        assert result.json == {"response": expected}
        assert validator("CurrentUser").is_valid(result.json)


def test_the_session_cookie_reads_itself_too(api: Api) -> None:
    cookie = api.login("ops").cookies["access_token"].value
    result = api.client.simulate_get("/api/5.0/user/current", cookies={"access_token": cookie})
    assert result.status_code == 200
    assert result.json["response"]["username"] == "ops"


def test_without_a_valid_token_it_is_a_401(api: Api) -> None:
    assert_alert(api.client.simulate_get("/api/5.0/user/current"), 401, UNAUTHORIZED)
    bad = {"Authorization": "Bearer not-a-token"}
    assert_alert(api.client.simulate_get("/api/5.0/user/current", headers=bad), 401, UNAUTHORIZED)
    ended = api.bearer("ops")
    assert api.client.simulate_post("/api/5.0/user/logout", headers=ended).status_code == 200
    assert_alert(api.client.simulate_get("/api/5.0/user/current", headers=ended), 401, UNAUTHORIZED)


def test_a_removed_user_is_no_longer_current(api: Api) -> None:
    token = api.bearer("viewer")
    api.users.remove("viewer")
    api.clock.now += api.settings.user_cache_s + 1
    assert_alert(api.client.simulate_get("/api/5.0/user/current", headers=token), 401, UNAUTHORIZED)
