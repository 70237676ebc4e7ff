"""The worker library's SPEC §11 parts on a fake channel: job.progress(percent=…), job.result,
JobFailed, and `tracker jobs emit`'s options, checked before anything is sent."""

from __future__ import annotations

import argparse

import pytest

from tests.unit.test_publisher import FakeKept
from tracker import events
from tracker.cli.emitting import add_detail_options, detail_fields
from tracker.config import Settings
from tracker.errors import InvalidEvent, UsageError
from tracker.publisher import JobFailed, Publisher


def sent_events(kept: FakeKept) -> list[events.Event]:
    return [events.parse(body, properties.content_type) for _, _, body, properties, _ in kept.sent]


def test_a_block_sends_its_progress_percent_and_its_result_with_succeeded() -> None:
    kept = FakeKept()
    with Publisher(Settings(), channel=kept).job(5) as job:
        job.progress("copying", percent=40)
        job.progress(percent=60.5)
        job.result = {"rows": 1200, "file": "s3://x/5.csv"}
        job.final_message = "done"
    progress, bare, succeeded = sent_events(kept)
    assert (progress.type, progress.message, progress.progress, progress.seq) == ("progress", "copying", 40.0, 0)
    assert (bare.message, bare.progress, bare.seq) == (None, 60.5, 1)
    assert (succeeded.type, succeeded.message, succeeded.seq) == ("succeeded", "done", 2)
    assert succeeded.result_json == '{"rows":1200,"file":"s3://x/5.csv"}'
    assert succeeded.error_code is None


def test_todays_block_sends_what_it_sent_before() -> None:
    kept = FakeKept()
    with Publisher(Settings(), channel=kept).job(5) as job:
        job.progress("copying")
    progress, succeeded = sent_events(kept)
    assert (
        progress.to_wire().keys()
        == succeeded.to_wire().keys()
        == {
            "event_id",
            "job_id",
            "type",
            "occurred_at",
            "message",
            "seq",
        }
    )
    assert job.result is None


def test_job_failed_sends_failed_with_its_error_and_is_raised_on() -> None:
    kept = FakeKept()
    with pytest.raises(JobFailed) as raised, Publisher(Settings(), channel=kept).job(5) as job:
        job.result = "not sent: the job failed"
        raise JobFailed("Disk full.", code="disk_full", details={"free_bytes": 0})
    assert (raised.value.message, raised.value.code, raised.value.details) == (
        "Disk full.",
        "disk_full",
        {"free_bytes": 0},
    )
    [failed] = sent_events(kept)
    assert (failed.type, failed.message, failed.result_json) == ("failed", "Disk full.", None)
    assert (failed.error_code, failed.error_details_json) == ("disk_full", '{"free_bytes":0}')


def test_job_failed_without_a_code_and_any_other_exception_send_no_error() -> None:
    for raised in (JobFailed("Gave up."), RuntimeError("Gave up.")):
        kept = FakeKept()
        with pytest.raises(type(raised)), Publisher(Settings(), channel=kept).job(5):
            raise raised
        [failed] = sent_events(kept)
        assert (failed.type, failed.message, failed.error_code) == ("failed", "Gave up.", None)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: JobFailed("x", code="Disk Full"), "error: code must be 1 to 64 characters of a-z 0-9 _ . -"),
        (lambda: JobFailed("x", code="c" * 65), "error: code must be 1 to 64 characters of a-z 0-9 _ . -"),
        (lambda: JobFailed("x", details={"a": 1}), "error: details go only with a code"),
        (lambda: JobFailed("x", code="big", details="x" * 16_383), "error: must be at most 16384 bytes"),
    ],
)
def test_a_job_failed_out_of_bounds_is_refused_when_made(make, reason) -> None:
    with pytest.raises(InvalidEvent, match="^" + reason.replace(".", r"\.")):
        make()


def test_details_of_exactly_16_kib_are_taken() -> None:
    assert JobFailed("x", code="big", details="x" * 16_382).details == "x" * 16_382  # 16,384 bytes with quotes


def test_a_result_out_of_bounds_fails_the_block_where_it_is_set() -> None:
    kept = FakeKept()
    with (
        pytest.raises(InvalidEvent, match=r"^result: must be at most 16384 bytes"),
        Publisher(Settings(), channel=kept).job(5) as job,
    ):
        job.result = "x" * 16_383
    [failed] = sent_events(kept)
    assert failed.type == "failed" and failed.message.startswith("result: must be at most 16384 bytes")
    assert job.result is None


@pytest.mark.parametrize("percent", [-0.5, 100.01, float("nan"), True])
def test_a_percent_out_of_bounds_is_refused_before_it_is_sent_and_uses_no_number(percent) -> None:
    kept = FakeKept()
    publisher = Publisher(Settings(), channel=kept)
    with pytest.raises(InvalidEvent, match=r"^progress: must be a number from 0 to 100$"):
        publisher.job(5).progress("x", percent=percent)
    assert not kept.sent
    assert publisher.emit(5, "progress").seq == 0


def emit_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("type")
    add_detail_options(parser)
    return parser.parse_args(argv)


def test_emit_options_become_the_events_fields() -> None:
    assert detail_fields(emit_args("progress")) == {}
    assert detail_fields(emit_args("progress", "--progress", "42.5")) == {"progress": 42.5}
    assert detail_fields(emit_args("succeeded", "--progress", "100", "--result", '{"rows": 3}')) == {
        "progress": 100.0,
        "result": {"rows": 3},
    }
    assert detail_fields(emit_args("failed", "--error-code", "disk_full")) == {"error_code": "disk_full"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["progress", "--progress", "101"], "--progress must be a number from 0 to 100"),
        (["progress", "--progress", "nan"], "--progress must be a number from 0 to 100"),
        (["progress", "--progress", "half"], "--progress must be a number from 0 to 100"),
        (["failed", "--result", "1"], "--result goes only with succeeded"),
        (
            ["succeeded", "--result", "{rows"],
            "--result must be JSON (Expecting property name enclosed in double quotes)",
        ),
        (["succeeded", "--result", "NaN"], "--result must be JSON (NaN is not JSON)"),
        (
            ["succeeded", "--result", '"' + "x" * 16_383 + '"'],
            "--result must be at most 16384 bytes as compact JSON, not 16385",
        ),
        (["succeeded", "--error-code", "x"], "--error-code goes only with failed"),
        (["failed", "--error-code", "Disk"], "--error-code must be 1 to 64 characters of a-z 0-9 _ . -"),
    ],
)
def test_emit_options_out_of_bounds_are_usage_errors_naming_the_option(argv, message) -> None:
    with pytest.raises(UsageError) as raised:
        detail_fields(emit_args(*argv))
    assert str(raised.value) == message
