"""The dashboard's Cancel button (SPEC §12) in a real headless Chromium, against a real `tracker api` and
`tracker consume`, RabbitMQ and PostgreSQL: shown on a PENDING job's page to a user who may cancel
(as GET user/current says), confirmed in a dialog, and the job's worker told; never shown, and no
cancel tried, for a user who may not."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from bench.processes import environment
from tests.e2e.live_api import LiveApi, add_users, running_api
from tests.e2e.test_dashboard import SEEN_WITHIN_S, Console, _expected, _playwright, create_job, log_in_by_keyboard
from tests.processes import ConsumerProcess
from tracker.config import Settings
from tracker.publisher import Publisher

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

_BROKER = ("amqp_url", "exchange", "queue", "dead_exchange", "dead_queue", "control_exchange")


@pytest.fixture
def chromium() -> Iterator[Any]:
    with _playwright()() as playwright:
        launched = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def live(settings: Settings, tmp_path: pathlib.Path) -> Iterator[LiveApi]:
    add_users(settings.database_url, ops="operations")
    consumer = ConsumerProcess(environment(settings.with_(reap_interval_s=0.5)), tmp_path / "consumer.log")
    consumer.start()
    try:
        consumer.wait_ready()
        with running_api(settings.database_url, tmp_path, **{name: getattr(settings, name) for name in _BROKER}) as api:
            yield api
    finally:
        consumer.stop()


def test_the_cancel_button_asks_then_cancels(chromium: Any, live: LiveApi, settings: Settings) -> None:
    token = live.login("ops")
    job_id = create_job(live, token, message="Regenerating.")
    done = create_job(live, token, message="Done already.")
    with Publisher(settings) as publisher:
        publisher.emit(done, "succeeded", "Done.")
        with publisher.job(job_id) as report:  # the worker, listening
            page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
            console = Console(page)
            page.goto(f"{live.base_url}/#/jobs/{done}")
            log_in_by_keyboard(page, "ops")
            page.get_by_role("heading", name=f"Job {done}").wait_for()
            page.wait_for_function(
                "() => document.getElementById('job-status').textContent === 'SUCCEEDED'",
                timeout=SEEN_WITHIN_S * 1000,
            )
            assert not page.get_by_role("button", name="Cancel this job").is_visible()  # a finished job: none

            page.evaluate(f"location.hash = '#/jobs/{job_id}'")
            page.get_by_role("heading", name=f"Job {job_id}").wait_for()
            button = page.get_by_role("button", name="Cancel this job")
            button.wait_for(timeout=SEEN_WITHIN_S * 1000)
            # Asked first: "No" changes nothing.
            button.click()
            dialog = page.get_by_role("dialog")
            assert f"Cancel job {job_id}?" in dialog.inner_text()
            page.get_by_role("button", name="No, keep it running").click()
            assert not dialog.is_visible()
            assert not report.cancelled.wait(1)
            # "Yes", with a reason: the worker hears it, the page says it was asked.
            button.click()
            page.get_by_label("Why (optional)").fill("Wrong region.")
            page.get_by_role("button", name="Yes, cancel it").click()
            assert report.cancelled.wait(10)
            assert report.cancel_notice is not None and report.cancel_notice.message == "Wrong region."
            page.get_by_text("Cancellation requested at").wait_for(timeout=SEEN_WITHIN_S * 1000)
            assert not button.is_visible()
            report.check_cancelled()
    page.wait_for_function(
        "() => document.getElementById('job-status').textContent === 'FAILED'", timeout=SEEN_WITHIN_S * 1000
    )
    assert page.locator("#job-message").inner_text() == "Wrong region."
    assert "cancel_requested" in page.locator("#timeline").inner_text()
    assert not page.locator("#cancel").is_visible()
    assert [text for text in console.take() if not _expected(text)] == []


def test_no_cancel_button_for_a_user_who_may_not(chromium: Any, live: LiveApi, settings: Settings) -> None:
    add_users(settings.database_url, viewer="read-only")
    job_id = create_job(live, live.login("ops"), message="Regenerating.")
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console = Console(page)
    sent: list[tuple[str, str]] = []
    page.on("request", lambda request: sent.append((request.method, request.url)))

    # read-only: the job's page is refused (403, no ASYNC-STATUS:READ), and no cancel is tried.
    page.goto(f"{live.base_url}/#/jobs/{job_id}")
    log_in_by_keyboard(page, "viewer")
    page.get_by_role("alert").wait_for()
    assert not page.get_by_role("button", name="Cancel this job").is_visible()
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("heading", name="Log in").wait_for()

    # A role that reads jobs but may not cancel them (none of the SPEC's three; an operator's own,
    # say): the same answer without ASYNC-STATUS:CANCEL, and the PENDING job's page has no button.
    def without_cancel(route: Any) -> None:
        answer = route.fetch()
        body = answer.json()
        body["response"]["permissions"] = [p for p in body["response"]["permissions"] if p != "ASYNC-STATUS:CANCEL"]
        route.fulfill(response=answer, json=body)

    page.route("**/user/current", without_cancel)
    with page.expect_response(lambda response: response.url.endswith("/user/current")) as current:
        log_in_by_keyboard(page, "ops")
    assert current.value.status == 200
    page.get_by_role("heading", name=f"Job {job_id}").wait_for()
    page.wait_for_function(
        "() => document.getElementById('job-status').textContent === 'PENDING'", timeout=SEEN_WITHIN_S * 1000
    )
    page.wait_for_timeout(500)  # the answer has been read: still no button
    assert not page.get_by_role("button", name="Cancel this job").is_visible()
    assert not page.locator("#cancel").is_visible()

    posts = [url for method, url in sent if method == "POST"]
    assert all(url.endswith(("/user/login", "/user/logout")) for url in posts), posts
    assert any(method == "GET" and url.endswith("/user/current") for method, url in sent)
    assert [text for text in console.take() if not _expected(text)] == []
    context.close()
