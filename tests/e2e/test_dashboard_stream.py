"""The dashboard follows SPEC §13's stream (api/static/dashboard-stream.js) in a real headless
Chromium: a job's end appears without a reload and without waiting for a refresh, and a page whose
stream drops (the API's workers restarted) resumes it from its last cursor (Last-Event-ID)."""

from __future__ import annotations

import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.live_api import LiveApi, add_users, running_api
from tests.e2e.test_dashboard import browser, log_in_by_keyboard, wait_for_row  # noqa: F401 - a fixture
from tracker.events import new_event
from tracker.store import JobStore

SEEN_WITHIN_S = 2.0  # well inside the page's own refresh (10 s with the stream open)

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)]


@pytest.fixture
def live(database_url: str, tmp_path: pathlib.Path) -> Iterator[LiveApi]:
    add_users(database_url, ops="operations")
    with running_api(database_url, tmp_path) as api:
        yield api


def _dashboard_showing(page: Any, live: LiveApi, job_id: int) -> None:
    """Open the dashboard on ``page``, log in as ops, and wait for PENDING job ``job_id`` in the list."""
    page.goto(live.base_url + "/")
    log_in_by_keyboard(page, "ops")
    page.locator("#dashboard").wait_for(state="visible")
    wait_for_row(page, job_id, "PENDING")


def _row_within(page: Any, job_id: int, status: str, seconds: float) -> float:
    started = time.monotonic()
    page.wait_for_function(
        '([id, status]) => document.querySelector(`#jobs tr[data-id="${id}"] .status`)?.textContent === status',
        arg=[job_id, status],
        timeout=seconds * 1000,
    )
    return time.monotonic() - started


def test_the_dashboard_shows_changes_from_the_stream_and_resumes_it(
    browser: Any,  # noqa: F811 - the fixture imported above
    live: LiveApi,
    store: JobStore,
) -> None:
    job = store.create_job("Deploying.")
    page = browser.new_context().new_page()
    streams: list[Any] = []
    page.on("request", lambda request: streams.append(request) if request.resource_type == "eventsource" else None)
    _dashboard_showing(page, live, job.id)
    page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
    page.wait_for_timeout(500)  # the stream is open
    assert len(streams) == 1

    # A job's end appears at once, without a reload.
    store.apply([new_event(job.id, "succeeded", "Deployed.")])
    assert _row_within(page, job.id, "SUCCEEDED", SEEN_WITHIN_S) < SEEN_WITHIN_S
    assert page.evaluate("window.sameDocument") is True

    # The stream drops (the API's workers are restarted: SIGHUP, and the old ones end their
    # streams); the browser reconnects with the last cursor it saw, and the page goes on showing
    # changes as they happen.
    other = store.create_job("Purging.")
    _row_within(page, other.id, "PENDING", SEEN_WITHIN_S)
    live.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while len(streams) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    resumed = [request.all_headers() for request in streams[1:]]
    assert resumed, "the stream was not opened again"
    assert resumed[0].get("last-event-id", "").isdigit(), resumed[0]
    store.apply([new_event(other.id, "failed", "Disk full.")])
    _row_within(page, other.id, "FAILED", 15)
    assert page.evaluate("window.sameDocument") is True


def test_a_keyboard_users_place_in_the_list_survives_the_streams_redraws(
    browser: Any,  # noqa: F811 - the fixture imported above
    live: LiveApi,
    store: JobStore,
) -> None:
    # The list is drawn anew at each change; a job's link focused by the keyboard stays focused,
    # so Enter still opens that job (it went nowhere when the redraw came between).
    kept, changing = store.create_job("Deploying."), store.create_job("Purging.")
    page = browser.new_context().new_page()
    _dashboard_showing(page, live, kept.id)
    page.get_by_role("link", name=f"Job {kept.id}", exact=True).first.focus()

    store.apply([new_event(changing.id, "succeeded", "Purged.")])
    _row_within(page, changing.id, "SUCCEEDED", SEEN_WITHIN_S)

    focused = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert focused == f"Job {kept.id}"
    page.keyboard.press("Enter")
    page.get_by_role("heading", name=f"Job {kept.id}").wait_for(timeout=SEEN_WITHIN_S * 1000)
