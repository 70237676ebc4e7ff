"""The dashboard (SPEC §7) in a real headless Chromium (Debian's ``chromium``, driven by Playwright's
Python client) against a real ``tracker api`` and ``tracker consume``, RabbitMQ and PostgreSQL.

It also takes the README's screenshot: into the test's temporary directory (checked to be a PNG),
and into docs/dashboard.png when TRACKER_SCREENSHOT=1 (``make screenshot``), so that an ordinary
run leaves the tree as it found it.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.processes import ROOT, environment
from tests.e2e.live_api import PASSWORD, LiveApi, add_users, running_api
from tests.processes import ConsumerProcess
from tracker.config import Settings
from tracker.publisher import Publisher

CHROMIUM = "/usr/bin/chromium"
INSTALL_CHROMIUM = "apt-get install -y --no-install-recommends chromium"
INSTALL_PLAYWRIGHT = "pip install -e '.[test]' (the test extra has playwright)"
SCREENSHOT = ROOT / "docs" / "dashboard.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REFRESH_S = 5  # the page's refresh interval, as it says on the page
SEEN_WITHIN_S = 2 * REFRESH_S + 5  # one refresh to start, one to see it, and a busy machine
LOST_TEXT = "not finished within 1 s"  # SPEC §6's message for a job past its timeout_s of 1
FORBIDDEN_TEXT = "missing required Permissions: ASYNC-STATUS:READ"  # SPEC §2's 403 alert

# Lines Chromium itself writes to the console for an answer of 400 or more. The page meets two on
# purpose: the 401 that tells it nobody is logged in, and the read-only user's 403.
NETWORK_STATUS = re.compile(r"^Failed to load resource: the server responded with a status of (\d+)")

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]


def _playwright() -> Any:
    """Playwright's sync API; fails (never skips) saying how to install what is missing."""
    if not pathlib.Path(CHROMIUM).exists():
        pytest.fail(f"the dashboard test needs Debian's chromium at {CHROMIUM}: {INSTALL_CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the dashboard test needs Playwright's Python client: {INSTALL_PLAYWRIGHT}")
    return sync_playwright


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_playwright = _playwright()
    with sync_playwright() as playwright:
        # The system's browser, never one Playwright would download.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def live(settings: Settings, tmp_path: pathlib.Path) -> Iterator[LiveApi]:
    """``tracker api`` and a ``tracker consume`` checking for lost jobs every half second."""
    add_users(settings.database_url, ops="operations", viewer="read-only")
    broker = {
        name: getattr(settings, name) for name in ("amqp_url", "exchange", "queue", "dead_exchange", "dead_queue")
    }
    consumer = ConsumerProcess(environment(settings.with_(reap_interval_s=0.5)), tmp_path / "consumer.log")
    consumer.start()
    try:
        consumer.wait_ready()
        with running_api(settings.database_url, tmp_path, **broker) as api:
            yield api
    finally:
        consumer.stop()


class Console:
    """What the page wrote to its console as errors, and the exceptions it did not catch."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def take(self) -> list[str]:
        taken, self.errors[:] = list(self.errors), []
        return taken


def create_job(api: LiveApi, token: str, **body: Any) -> int:
    answer = api.request(
        "POST",
        "/api/5.0/async_status",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert answer.status == 202, answer
    return int(answer.json["response"]["id"])  # type: ignore[index]


def log_in_by_keyboard(page: Any, username: str) -> None:
    """Log in without the mouse: the form has the focus, Tab moves to the password, Enter sends."""
    page.get_by_role("heading", name="Log in").wait_for()
    assert page.evaluate("document.activeElement.id") == "username"
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "password"
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")


def row_status(page: Any, job_id: int) -> str | None:
    row = page.locator(f'#jobs tr[data-id="{job_id}"] .status')
    return row.inner_text() if row.count() else None


def wait_for_row(page: Any, job_id: int, status: str) -> None:
    page.wait_for_function(
        '([id, status]) => document.querySelector(`#jobs tr[data-id="${id}"] .status`)?.textContent === status',
        arg=[job_id, status],
        timeout=SEEN_WITHIN_S * 1000,
    )


def wait_for_rows(page: Any, job_ids: list[int]) -> None:
    """Wait until the list shows exactly these jobs, in this order."""
    page.wait_for_function(
        "([ids]) => [...document.querySelectorAll('#jobs tr')].map((row) => row.dataset.id).join() === ids",
        arg=[",".join(map(str, job_ids))],
        timeout=SEEN_WITHIN_S * 1000,
    )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_dashboard_in_chromium(browser: Any, live: LiveApi, settings: Settings, tmp_path: pathlib.Path) -> None:
    token = live.login("ops")
    # lost one second from now (error code timeout)
    lost = create_job(live, token, message="Rebuilding the index.", kind="index.rebuild", timeout_s=1)
    finished = [
        create_job(
            live,
            token,
            message=f"Deploying release {n}.",
            kind="deploy",
            labels={"env": "prod" if n < 3 else "staging", "release": str(n)},
        )
        for n in range(1, 4)
    ]
    running = create_job(live, token, message="Exporting.", kind="export.csv", labels={"env": "prod", "team": "cdn"})
    with Publisher(settings) as publisher:
        for job_id in finished[:2]:
            publisher.emit(job_id, "progress", "Half way.", progress=50)
            publisher.emit(job_id, "succeeded", "Deployed.", progress=100, result={"servers": 12})
        publisher.emit(finished[2], "failed", "Disk full.", error_code="disk_full")
        publisher.emit(running, "progress", "Exported 4 of 10 parts.", progress=40)
        publisher.emit(10**12, "progress", "For a job that does not exist.")  # dead-lettered: unknown_job

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console = Console(page)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))

    # The page, with its own policy and nothing from elsewhere; nobody is logged in yet.
    answer = page.goto(live.base_url + "/")
    assert answer.status == 200 and answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    assert not page.get_by_role("button", name="Log out").is_visible()
    log_in_by_keyboard(page, "ops")
    page.locator("#dashboard").wait_for(state="visible")
    page.evaluate("window.sameDocument = true")  # gone if anything reloads the page

    # Every control has a label a screen reader reads out.
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select')].filter((e) => e.labels.length === 0).map((e) => e.id)"
    )
    assert unlabelled == []

    # At a glance: counts by status, the lost job (failed by the tracker), the dead letter.
    page.wait_for_function(
        "() => document.getElementById('count-lost').textContent === '1'"
        " && document.getElementById('count-dead').textContent === '1'",
        timeout=SEEN_WITHIN_S * 1000,
    )
    assert page.locator("#count-SUCCEEDED").inner_text() == "2"
    assert page.locator("#count-FAILED").inner_text() == "2"
    page.locator("#lost-details summary").click()
    assert LOST_TEXT in page.locator("#lost-jobs").inner_text()

    # What a job says about itself (SPEC §11): a running job's progress bar, kind, labels and how
    # long it has been running; an ended one's duration and error code, and no bar.
    wait_for_row(page, running, "PENDING")
    row = page.locator(f'#jobs tr[data-id="{running}"]')
    assert row.locator("progress").evaluate("bar => [bar.value, bar.max]") == [40, 100]
    assert row.locator("progress").get_attribute("aria-label") == f"Job {running}: 40% done"
    assert row.locator(".percent").inner_text() == "40%"
    assert row.locator(".kind").inner_text() == "export.csv"
    assert row.locator(".labels a").all_inner_texts() == ["env=prod", "team=cdn"]
    assert row.locator(".duration").inner_text().startswith("running for ")
    broken = page.locator(f'#jobs tr[data-id="{finished[2]}"]')
    assert broken.locator(".error-code").inner_text() == "disk_full"
    assert broken.locator(".duration").inner_text().startswith("ran for ")
    assert page.locator(f'#jobs tr[data-id="{lost}"] .error-code').inner_text() == "timeout"
    assert page.locator(f'#jobs tr[data-id="{finished[0]}"] progress').count() == 0

    # A new job appears, PENDING, and becomes SUCCEEDED, without a reload.
    job_id = create_job(live, token, message="Purging the cache.")
    wait_for_row(page, job_id, "PENDING")
    assert page.locator("#count-PENDING").inner_text() == "2"
    with Publisher(settings) as publisher:
        publisher.emit(job_id, "progress", "Purged 10 of 20 servers.")
        publisher.emit(job_id, "succeeded", "Purged.")
    wait_for_row(page, job_id, "SUCCEEDED")
    assert page.evaluate("window.sameDocument") is True
    shot = page.screenshot(full_page=True)
    assert shot.startswith(PNG_SIGNATURE) and len(shot) > 10_000, "the screenshot is not a picture of the page"
    (tmp_path / "dashboard.png").write_bytes(shot)
    if os.environ.get("TRACKER_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(shot)

    # What the page costs the API while it sits open on the list: its requests in a few refreshes.
    requests.clear()
    started = time.monotonic()
    page.wait_for_timeout(3 * REFRESH_S * 1000)
    per_second = len([url for url in requests if "/api/" in url]) / (time.monotonic() - started)
    print(f"dashboard: {per_second:.2f} API requests/s while open on the list ({len(requests)} requests)")
    assert per_second <= 1.5, requests

    # Filter: only FAILED jobs, as the list answers them (the address keeps the filter).
    page.get_by_label("Failed", exact=True).check()
    page.wait_for_function("() => location.hash.includes('status=FAILED')")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#jobs .status')].map((e) => e.textContent).join() === 'FAILED,FAILED'",
        timeout=SEEN_WITHIN_S * 1000,
    )
    assert {row_status(page, lost), row_status(page, finished[2])} == {"FAILED"}
    assert "with status FAILED" in page.locator("#jobs-caption").inner_text()
    # Sorted by id, ascending then descending, from the column header's button.
    page.locator("th[data-sort=id] button").click()
    page.wait_for_function("() => location.hash.includes('sortOrder=asc')")
    page.wait_for_function(
        "([first]) => document.querySelector('#jobs tr')?.dataset.id === String(first)",
        arg=[lost],
        timeout=SEEN_WITHIN_S * 1000,
    )
    assert page.locator("th[data-sort=id]").get_attribute("aria-sort") == "ascending"
    # The skip link moves the focus to the content and leaves the view (held in the address) alone.
    view = page.evaluate("location.hash")
    page.locator("#skip").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("[document.activeElement.id, location.hash]") == ["main", view]

    page.get_by_label("Failed", exact=True).uncheck()
    wait_for_row(page, job_id, "SUCCEEDED")

    # A click on a label filters the list by it (the address keeps it, as a chip that removes it);
    # a kind typed in its box, and a time span, narrow it further (SPEC §11). (Ids ascending, as sorted above.)
    page.locator(f'#jobs tr[data-id="{running}"] .labels a', has_text="env=prod").click()
    page.wait_for_function("() => location.hash.includes('label=env%3Dprod')")
    wait_for_rows(page, [finished[0], finished[1], running])
    assert "labelled env=prod" in page.locator("#jobs-caption").inner_text()
    page.get_by_label("Kind", exact=True).fill("deploy")
    page.keyboard.press("Enter")
    wait_for_rows(page, finished[:2])
    assert "of kind deploy, labelled env=prod" in page.locator("#jobs-caption").inner_text()
    page.get_by_role("link", name="Remove the label filter env=prod").click()
    wait_for_rows(page, finished)
    page.get_by_label("Started in").select_option("1h")
    page.wait_for_function("() => location.hash.includes('startedAfter=1h')")
    page.wait_for_function(
        "() => document.getElementById('jobs-caption').textContent"
        " .includes('of kind deploy, started in the last hour')",
        timeout=SEEN_WITHIN_S * 1000,
    )
    wait_for_rows(page, finished)
    # The lost card: the exact count of error codes lost and timeout, and a link to those jobs.
    page.locator("#count-lost").click()
    page.wait_for_function("() => location.hash.includes('errorCode=lost&errorCode=timeout')")
    wait_for_rows(page, [lost])
    assert page.get_by_label("Kind", exact=True).input_value() == ""
    page.evaluate("location.hash = '#/'")
    wait_for_row(page, job_id, "SUCCEEDED")

    # A job's page: what it says about itself, and its events' progress and result.
    page.evaluate(f"location.hash = '#/jobs/{finished[0]}'")
    page.get_by_role("heading", name=f"Job {finished[0]}").wait_for()
    page.wait_for_function("() => document.querySelectorAll('#timeline tr').length === 2", timeout=SEEN_WITHIN_S * 1000)
    about = page.locator("#job-about").inner_text()
    for shown in ("Kind", "deploy", "env=prod", "release=1", "Progress", "100%", "ran for ", '"servers": 12'):
        assert shown in about, (shown, about)
    assert page.locator("#timeline .details").all_inner_texts() == ["50%", '100%; result {"servers":12}']
    page.evaluate(f"location.hash = '#/jobs/{running}'")
    page.get_by_role("heading", name=f"Job {running}").wait_for()
    page.wait_for_function(
        "() => document.getElementById('job-about').textContent.includes('running for')", timeout=SEEN_WITHIN_S * 1000
    )
    assert page.locator("#job-about progress").get_attribute("aria-label") == f"Job {running}: 40% done"
    page.evaluate("location.hash = '#/'")
    wait_for_row(page, job_id, "SUCCEEDED")

    # A job's page with its timeline, opened from the list by the keyboard.
    page.get_by_role("link", name=f"Job {job_id}", exact=True).first.focus()
    page.keyboard.press("Enter")
    page.get_by_role("heading", name=f"Job {job_id}").wait_for()
    page.wait_for_function("() => document.querySelectorAll('#timeline tr').length === 2", timeout=SEEN_WITHIN_S * 1000)
    timeline = page.locator("#timeline").inner_text()
    assert "Purged 10 of 20 servers." in timeline and "succeeded" in timeline
    assert page.locator("#job-status").inner_text() == "SUCCEEDED"
    assert page.locator("#job-message").inner_text() == "Purged."
    assert page.evaluate("window.sameDocument") is True

    # A PENDING job's page holds its GET (Prefer: wait) and shows the job's end as it happens.
    waiting = create_job(live, token, message="Waiting for the end.")
    held: list[float] = []
    page.on(
        "response",
        lambda response: (
            held.append(time.monotonic())
            if response.url.endswith(f"/async_status/{waiting}") and "preference-applied" in response.headers
            else None
        ),
    )
    page.evaluate(f"location.hash = '#/jobs/{waiting}'")
    page.get_by_role("heading", name=f"Job {waiting}").wait_for()
    page.wait_for_function(
        "() => document.getElementById('job-status').textContent === 'PENDING'", timeout=SEEN_WITHIN_S * 1000
    )
    page.wait_for_timeout(500)  # its next GET is held now
    with Publisher(settings) as publisher:
        sent = time.monotonic()
        publisher.emit(waiting, "succeeded", "The end.")
    page.wait_for_function(
        "() => document.getElementById('job-status').textContent === 'SUCCEEDED'", timeout=SEEN_WITHIN_S * 1000
    )
    shown_s = time.monotonic() - sent
    print(f"dashboard: a PENDING job's page showed SUCCEEDED {shown_s * 1000:.0f} ms after the publish")
    assert held and held[-1] >= sent  # the answer that brought it was a held wait
    assert page.locator("#timeline").inner_text().count("The end.") == 1

    # An expired session (the cookies gone) returns to the login form at the next refresh.
    context.clear_cookies()
    page.get_by_text("Your session has ended").wait_for(timeout=SEEN_WITHIN_S * 1000)
    assert page.locator("#username").is_visible()

    # A user without ASYNC-STATUS:READ sees the 403 as a message, not a blank page.
    log_in_by_keyboard(page, "viewer")
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert FORBIDDEN_TEXT in alert.inner_text()
    assert page.get_by_role("button", name="Log out").is_visible()
    # The logout must really end the session: the page declares its body JSON, from its own origin
    # (SPEC §2), so the answer is 200, not a refusal the page would pass over.
    with page.expect_response(lambda response: response.url.endswith("/user/logout")) as logout:
        page.get_by_role("button", name="Log out").click()
    assert logout.value.status == 200, logout.value.text()
    page.get_by_role("heading", name="Log in").wait_for()

    # No error on the console but the answers the page asked for: 401s before a login, the 403.
    unexpected = [text for text in console.take() if not _expected(text)]
    assert unexpected == []
    context.close()


def _expected(text: str) -> bool:
    match = NETWORK_STATUS.match(text)
    return match is not None and match[1] in ("401", "403")
