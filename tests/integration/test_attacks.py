"""Attacks on the HTTP API in process, over real SQLite and PostgreSQL: each refused with its 4xx alert, no data.

Forged, unsigned, expired and deleted users' tokens are in test_api.py; the gunicorn-level ones
(oversized headers, chunked bodies, bytes that are not HTTP) in tests/e2e/test_http_limits.py.
"""

from __future__ import annotations

import base64
import json
import time

import falcon.testing
import jwt
import pytest
import sqlalchemy as sa

from api.resources import MAX_BODY_BYTES
from tests.conftest import TEST_SECRET
from tests.integration.test_api import PASSWORD, Api, assert_alert, build
from tests.spec_texts import ID_NOT_INTEGER
from tracker.config import Settings
from tracker.users import UserStore

UNAUTHORIZED = "unauthorized, please log in."
SQL_INJECTION_IDS = [
    "1 OR 1=1",
    "1%20OR%201=1",
    "1;DROP TABLE async_status",
    "1%3BDROP%20TABLE%20async_status",
    "1'--",
    "1%27--",
    "1' OR '1'='1",
    "1%27%20OR%20%271%27=%271",
    "(SELECT 1)",
    "1 UNION SELECT username FROM tracker_user",
    "1--",
    "-1 OR 1",
    "1%00",
    "0x1",
    "1e0",
]
TRAVERSALS = [  # the path as sent, and the path the 404 alert names (decoded, as Falcon routes it)
    ("/api/5.0/async_status/..%2F..%2Fetc%2Fpasswd", "/api/5.0/async_status/../../etc/passwd"),
    ("/api/5.0/async_status/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/api/5.0/async_status/../../etc/passwd"),
    ("/api/5.0/async_status/../../../etc/passwd", "/api/5.0/async_status/../../../etc/passwd"),
    ("/api/5.0/../../etc/passwd", "/api/5.0/../../etc/passwd"),
    ("/api/..%2F..%2Fetc%2Fpasswd/async_status/1", "/api/../../etc/passwd/async_status/1"),
    ("/api/5.0/openapi.json/..%2F..%2F..%2Fetc%2Fpasswd", "/api/5.0/openapi.json/../../../etc/passwd"),
    ("/api/5.0/async_status/1/..%2F2", "/api/5.0/async_status/1/../2"),
]
NONE_HEADER = b'{"alg":"none","typ":"JWT"}'
TRAVERSAL_IDS = ["..", "%2e%2e", "..%5C..%5Cwindows", "%252e%252e%252fetc%252fpasswd", "%c0%ae%c0%ae"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tampered(token: str) -> dict[str, str]:
    """Variants of a valid token, each changed the way an attacker would, by name."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    swap = "A" if signature[10] != "A" else "B"
    now = int(time.time())
    return {
        "signature char flipped": f"{header}.{payload}.{signature[:10]}{swap}{signature[11:]}",
        "payload now names admin": f"{header}.{b64(json.dumps({**claims, 'sub': 'admin'}).encode())}.{signature}",
        "payload expiry extended": f"{header}.{b64(json.dumps({**claims, 'exp': now + 10**6}).encode())}.{signature}",
        "header says alg none": f"{b64(NONE_HEADER)}.{payload}.",
        "header says alg None, signature kept": f"{b64(NONE_HEADER.replace(b'none', b'None'))}.{payload}.{signature}",
        "signed HS384 with the right key": jwt.encode(claims, TEST_SECRET, algorithm="HS384"),
        "no exp claim, right key": jwt.encode({"sub": "admin", "iat": now}, TEST_SECRET, algorithm="HS256"),
        "not yet valid, right key": jwt.encode({**claims, "nbf": now + 3600}, TEST_SECRET, algorithm="HS256"),
        "empty subject, right key": jwt.encode({**claims, "sub": ""}, TEST_SECRET, algorithm="HS256"),
        "signature dropped": f"{header}.{payload}.",
        "extra segment": f"{token}.{signature}",
        "whitespace inside": f"{header}. {payload}.{signature}",
    }


def count_jobs(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM async_status")).scalar_one()


def test_tampered_tokens_and_cookie_values_are_refused(api: Api) -> None:
    token = api.login("ops").cookies["access_token"].value
    job = api.client.simulate_post("/api/5.0/async_status", cookies={"access_token": token}, json={}).json["response"]
    url = f"/api/5.0/async_status/{job['id']}"
    for _name, forged in tampered(token).items():
        for credentials in (
            {"headers": {"Authorization": f"Bearer {forged}"}},
            {"cookies": {"access_token": forged}},
            {"cookies": {"mojolicious": forged}},
        ):
            assert_alert(api.client.simulate_get(url, **credentials), 401, UNAUTHORIZED)
            assert_alert(api.client.simulate_post("/api/5.0/async_status", json={}, **credentials), 401, UNAUTHORIZED)
    # A tampered cookie is not rescued by a good one after it: the first credential found is the one judged.
    forged = tampered(token)["signature char flipped"]
    assert_alert(
        api.client.simulate_get(url, cookies={"access_token": forged, "mojolicious": token}), 401, UNAUTHORIZED
    )
    assert_alert(
        api.client.simulate_get(url, headers={"Authorization": f"Bearer {forged}"}, cookies={"access_token": token}),
        401,
        UNAUTHORIZED,
    )
    # The untouched token still works, so it was the tampering that was refused.
    assert api.client.simulate_get(url, cookies={"mojolicious": token}).json == {"response": job}


@pytest.mark.parametrize("credentials", ["admin' --", "' OR '1'='1", 'admin"; DROP TABLE tracker_user; --'])
def test_sql_injection_in_credentials_logs_no_one_in(api: Api, engine: sa.Engine, credentials: str) -> None:
    assert_alert(api.login(credentials, "x"), 401, "Invalid username or password.")
    assert_alert(api.login("admin", credentials), 401, "Invalid username or password.")
    assert sa.inspect(engine).has_table("tracker_user")
    assert api.login("admin").status_code == 200


def test_sql_injection_ids_are_bad_input_and_touch_nothing(api: Api, engine: sa.Engine) -> None:
    headers = api.bearer("ops")
    job_id = api.jobs.create_job().id
    for text in SQL_INJECTION_IDS:
        assert_alert(api.client.simulate_get(f"/api/5.0/async_status/{text}", headers=headers), 400, ID_NOT_INTEGER)
    # A comment that looks like a path splits the id into segments no route has.
    result = api.client.simulate_get("/api/5.0/async_status/1/**/OR/**/1=1", headers=headers)
    assert_alert(result, 404, "The requested path '/api/5.0/async_status/1/**/OR/**/1=1' does not exist.")
    # SQL in a message is kept as text, never run.
    statement = "x'); DROP TABLE async_status; --"
    created = api.client.simulate_post("/api/5.0/async_status", headers=headers, json={"message": statement})
    assert created.json["response"]["message"] == statement
    assert sa.inspect(engine).has_table("async_status") and sa.inspect(engine).has_table("tracker_user")
    assert count_jobs(engine) == 2
    assert api.client.simulate_get(f"/api/5.0/async_status/{job_id}", headers=headers).status_code == 200


def test_path_traversal_reaches_no_file(api: Api) -> None:
    headers = api.bearer("admin")
    for sent, routed in TRAVERSALS:
        for credentials in ({}, headers):
            result = api.client.simulate_get(sent, headers=credentials)
            assert_alert(result, 404, f"The requested path '{routed}' does not exist.")
    for text in TRAVERSAL_IDS:
        assert_alert(api.client.simulate_get(f"/api/5.0/async_status/{text}", headers=headers), 400, ID_NOT_INTEGER)


def test_oversized_and_hostile_bodies_are_refused_before_use(api: Api, engine: sa.Engine) -> None:
    headers = {**api.bearer("ops"), "Content-Type": "application/json"}  # a login's body must say it is JSON
    too_large = f"the request body must be at most {MAX_BODY_BYTES} bytes"
    padding = MAX_BODY_BYTES - len('{"message":""}')
    for path in ("/api/5.0/async_status", "/api/5.0/user/login"):
        over = json.dumps({"message": "x" * (padding + 1), "u": "ops", "p": PASSWORD}).encode()
        assert_alert(api.client.simulate_post(path, headers=headers, body=over), 413, too_large)
        # A Content-Length that promises more than the limit is refused without reading a byte.
        result = api.client.simulate_post(path, headers={**headers, "Content-Length": str(10**12)}, body=b"{}")
        assert_alert(result, 413, too_large)
        # Nesting deep enough to exhaust a recursive parser, under the size limit: still a plain 400.
        nested = api.client.simulate_post(path, headers=headers, body="[" * 30_000 + "]" * 30_000)
        assert nested.status_code == 400 and list(nested.json) == ["alerts"]
        # A form is not read as JSON, so it cannot smuggle fields past the JSON checks.
        form = api.client.simulate_post(
            path, headers={**headers, "Content-Type": "application/x-www-form-urlencoded"}, body=f"u=ops&p={PASSWORD}"
        )
        assert form.status_code == 415 and list(form.json) == ["alerts"]
    exactly = b'{"message":"' + b"x" * padding + b'"}'
    assert len(exactly) == MAX_BODY_BYTES
    assert_alert(
        api.client.simulate_post("/api/5.0/async_status", headers=headers, body=exactly),
        400,
        f"'message' must be at most 4096 characters, not {padding}",
    )
    assert count_jobs(engine) == 0


def test_oversized_credentials_are_just_invalid(api: Api) -> None:
    big = "A" * 8000  # under gunicorn's field limit, so it reaches the app
    for credentials in (
        {"headers": {"Authorization": f"Bearer {big}"}},
        {"cookies": {"access_token": big}},
        {"cookies": {f"c{i}": "x" * 50 for i in range(150)} | {"mojolicious": big}},
    ):
        assert_alert(api.client.simulate_get("/api/5.0/async_status/1", **credentials), 401, UNAUTHORIZED)
    assert_alert(api.login("u" * 60_000), 401, "Invalid username or password.")


def test_brute_force_lock_refuses_even_the_right_password_then_expires(
    settings: Settings, engine: sa.Engine, users: UserStore
) -> None:
    api = build(settings.with_(login_max_failures=3, login_lockout_s=1), engine, users)
    for attempt in range(3):
        assert_alert(api.login("ops", f"guess {attempt}"), 401, "Invalid username or password.")
    locked = api.login("ops")
    assert_alert(locked, 429, "too many failed login attempts; try again in 1 seconds")
    assert locked.headers["retry-after"] == "1"
    assert not locked.cookies
    time.sleep(1.1)
    assert api.login("ops").status_code == 200


# What falcon.testing sends as the request's scheme and Host: the tracker's own origin by default.
OWN_ORIGIN = "http://falconframework.org"
SAME_SITE = "http://falconframework.org:8080"  # another port of the same host: same site, another origin
NOT_JSON = "a request that uses or opens a cookie session must have Content-Type: application/json"
CROSS_ORIGIN = "refused: a cookie session is used and opened only from the tracker's own origin"


def test_a_cookie_creates_no_job_without_declaring_its_body_json(api: Api, engine: sa.Engine) -> None:
    """issue 24 (1): ``fetch(url, {method: "POST", mode: "no-cors", credentials: "include", body: new
    Blob(['{"message":"x"}'])})`` from a page on another port sends no Content-Type (and a form
    none of JSON's): a cookie alone must not make such a body a job."""
    cookie = {"access_token": api.login("ops").cookies["access_token"].value}
    for content_type in (None, "*/*", "application/*", "text/plain", "application/x-www-form-urlencoded"):
        headers = {} if content_type is None else {"Content-Type": content_type}
        result = api.client.simulate_post(
            "/api/5.0/async_status", cookies=cookie, headers=headers, body=b'{"message":"x"}'
        )
        assert_alert(result, 415, NOT_JSON)
    assert_alert(api.client.simulate_post("/api/5.0/async_status", cookies=cookie), 415, NOT_JSON)  # no body
    assert count_jobs(engine) == 0
    # JSON, in any case and with parameters, is what the dashboard sends.
    for content_type in ("application/json", "APPLICATION/JSON; charset=utf-8", "application/json;charset=UTF-8"):
        result = api.client.simulate_post(
            "/api/5.0/async_status", cookies=cookie, headers={"Content-Type": content_type}, body=b'{"message":"x"}'
        )
        assert result.status_code == 202, (content_type, result.text)
    assert count_jobs(engine) == 3


def test_a_cookie_acts_only_from_the_trackers_own_origin(api: Api, engine: sa.Engine) -> None:
    """SameSite=Strict lets a page of the same site (another port, a sibling subdomain) send the
    cookies: the request's Origin and Sec-Fetch-Site tell such a page from the tracker's own."""
    cookie = {"mojolicious": api.login("ops").cookies["mojolicious"].value}

    def create(**headers: str) -> falcon.testing.Result:
        return api.client.simulate_post("/api/5.0/async_status", cookies=cookie, json={"message": "x"}, headers=headers)

    for refused in (
        {"Origin": SAME_SITE},
        {"Origin": "https://falconframework.org"},  # the same host over another scheme
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame, a file, some redirects
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": OWN_ORIGIN, "Sec-Fetch-Site": "same-site"},
    ):
        assert_alert(create(**refused), 403, CROSS_ORIGIN)
    assert count_jobs(engine) == 0
    for accepted in (
        {},  # no Origin at all: not a browser, or one that asks the preflight JSON needs across origins
        {"Origin": OWN_ORIGIN},
        {"Origin": "HTTP://FalconFramework.org:80"},  # the same origin, written otherwise
        {"Origin": OWN_ORIGIN, "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # the user's own doing (typed, bookmarked)
    ):
        assert create(**accepted).status_code == 202, accepted
    # Reading is not acting: a GET is answered whatever its origin (CORS keeps the answer from the page).
    job_id = count_jobs(engine)
    got = api.client.simulate_get(f"/api/5.0/async_status/{job_id}", cookies=cookie, headers={"Origin": SAME_SITE})
    assert got.status_code == 200


def test_a_same_site_form_does_not_log_the_user_out(api: Api) -> None:
    cookie = {"access_token": api.login("ops").cookies["access_token"].value}
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": SAME_SITE, "Sec-Fetch-Site": "same-site"}
    refused = api.client.simulate_post("/api/5.0/user/logout", cookies=cookie, headers=form, body=b"")
    assert_alert(refused, 403, CROSS_ORIGIN)
    assert not refused.cookies  # nothing cleared
    assert_alert(api.client.simulate_post("/api/5.0/user/logout", cookies=cookie), 415, NOT_JSON)
    logged_out = api.client.simulate_post(
        "/api/5.0/user/logout", cookies=cookie, headers={"Content-Type": "application/json", "Origin": OWN_ORIGIN}
    )
    assert logged_out.status_code == 200 and logged_out.cookies["access_token"].value == ""


def test_bearer_clients_are_unaffected(api: Api, engine: sa.Engine) -> None:
    """A page cannot set Authorization on another origin's request without a preflight, which
    the tracker does not grant: a Bearer token needs none of the cookie's checks, and keeps
    today's behaviour exactly (a body without Content-Type is read as JSON)."""
    bearer = api.bearer("ops")
    cookie = {"access_token": api.login("ops").cookies["access_token"].value}
    for headers in ({}, {"Content-Type": "*/*"}, {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}):
        for cookies in ({}, cookie):  # the Bearer header is the credential judged, cookies or not
            result = api.client.simulate_post(
                "/api/5.0/async_status", headers={**bearer, **headers}, cookies=cookies, body=b'{"message":"x"}'
            )
            assert result.status_code == 202, (headers, cookies, result.text)
    assert count_jobs(engine) == 6
    assert api.client.simulate_post("/api/5.0/user/logout", headers=api.bearer("ops")).status_code == 200


def test_a_login_is_opened_only_from_the_trackers_own_origin(api: Api) -> None:
    """Login CSRF: a page elsewhere logging the victim in as the attacker, whose jobs the victim's
    dashboard would then show and create. No cookie is set for such a login."""
    credentials = json.dumps({"u": "ops", "p": PASSWORD}).encode()

    def login(**headers: str) -> falcon.testing.Result:
        return api.client.simulate_post("/api/5.0/user/login", body=credentials, headers=headers)

    for refused in ({"Origin": SAME_SITE}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        result = login(**{"Content-Type": "application/json", **refused})
        assert_alert(result, 403, CROSS_ORIGIN)
        assert not result.cookies
    for content_type in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "*/*"}):
        result = login(**content_type)
        assert result.status_code == 415 and not result.cookies, content_type
    # A login without a body still answers SPEC §2's 400, and a JSON one from the tracker's page logs in.
    assert_alert(api.client.simulate_post("/api/5.0/user/login"), 400, "username and password are required")
    assert login(**{"Content-Type": "application/json", "Origin": OWN_ORIGIN}).status_code == 200


def test_behind_a_proxy_the_public_origins_are_the_trackers_own(
    settings: Settings, engine: sa.Engine, users: UserStore
) -> None:
    """Behind a TLS-terminating proxy the request reaches the tracker as http://internal-name:
    TRACKER_PUBLIC_ORIGIN names the origins the dashboard is served from, and only those."""
    api = build(settings.with_(public_origin="https://tracker.example.com, https://jobs.example.com"), engine, users)
    cookie = {"access_token": api.login("ops").cookies["access_token"].value}

    def create(origin: str) -> falcon.testing.Result:
        return api.client.simulate_post("/api/5.0/async_status", cookies=cookie, json={}, headers={"Origin": origin})

    assert create("https://tracker.example.com").status_code == 202
    assert create("https://jobs.example.com").status_code == 202
    assert_alert(create(OWN_ORIGIN), 403, CROSS_ORIGIN)  # the address the proxy used is not the public one
    assert_alert(create("http://tracker.example.com"), 403, CROSS_ORIGIN)


def test_one_users_failures_lock_that_user_at_that_address_only(
    settings: Settings, engine: sa.Engine, users: UserStore
) -> None:
    """issue 24 (5): after enough failures for one user from one address, the right password of
    any user from that address was refused (behind a proxy, everybody's), and the user's from
    any address. What the attack targets is the user at that address: that is what is locked."""
    api = build(settings.with_(login_max_failures=3, login_lockout_s=60), engine, users)
    for attempt in range(3):
        assert_alert(api.login("ops", f"guess {attempt}", remote_addr="10.9.9.9"), 401, "Invalid username or password.")
    locked = api.login("ops", remote_addr="10.9.9.9")
    assert locked.status_code == 429 and not locked.cookies
    assert 0 < int(locked.headers["retry-after"]) <= 60
    assert api.login("admin", remote_addr="10.9.9.9").status_code == 200  # the others behind that address
    assert api.login("ops", remote_addr="10.0.0.2").status_code == 200  # the user from elsewhere


def test_many_names_from_one_address_lock_that_address(settings: Settings, engine: sa.Engine, users: UserStore) -> None:
    """Credential stuffing: one guess for each of many names, from one address; its own, looser limit."""
    api = build(settings.with_(login_max_failures=3, login_max_failures_per_address=5), engine, users)
    for name in ("alice", "bob", "carol", "dave", "erin"):
        assert api.login(name, "Winter2024!", remote_addr="10.9.9.9").status_code == 401
    locked = api.login("ops", remote_addr="10.9.9.9")
    assert locked.status_code == 429 and not locked.cookies
    assert api.login("ops", remote_addr="10.0.0.2").status_code == 200


def test_one_name_guessed_from_many_addresses_locks_that_name(
    settings: Settings, engine: sa.Engine, users: UserStore
) -> None:
    """Distributed guessing of one account: a few guesses from each of many addresses."""
    api = build(settings.with_(login_max_failures=3, login_max_failures_per_user=6), engine, users)
    for n in range(6):
        assert api.login("ops", f"guess {n}", remote_addr=f"10.1.0.{n // 2}").status_code == 401
    locked = api.login("ops", remote_addr="10.2.0.1")  # anywhere, even the right password
    assert locked.status_code == 429 and not locked.cookies
    assert api.login("admin", remote_addr="10.1.0.0").status_code == 200
