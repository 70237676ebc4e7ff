"""The pure part of leases (SPEC §6): settings, which reason decides, and the event the tracker publishes."""

from __future__ import annotations

import datetime as dt
import uuid

import orjson
import pytest

from tracker import events, leases, merge, timefmt
from tracker.config import ConfigError, Settings

AT = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("value", [1, 60, leases.MAX_TIMEOUT_S])
def test_timeouts_in_range_are_taken(value):
    assert leases.check_timeout("timeout_s", value) == value


def test_a_number_with_no_fraction_is_the_integer_it_names():
    # JSON Schema's integer (the OpenAPI document's) includes 60.0; schemathesis sends such bodies.
    assert leases.check_timeout("timeout_s", 60.0) == 60
    assert type(leases.check_timeout("timeout_s", 60.0)) is int


@pytest.mark.parametrize(
    "value", [0, -5, leases.MAX_TIMEOUT_S + 1, 2.5, 0.0, float("nan"), float("inf"), "60", True, False, None, [1], {}]
)
def test_anything_else_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match=r"^heartbeat_timeout_s must be an integer from 1 to 2592000$"):
        leases.check_timeout("heartbeat_timeout_s", value)


def test_limits_take_what_is_asked_else_the_defaults_and_a_default_lease_of_0_is_none():
    assert leases.limits_for(None, None, 86400, 0) == leases.JobLimits(86400, None)
    assert leases.limits_for(60, 5, 86400, 0) == leases.JobLimits(60, 5)
    assert leases.limits_for(None, None, 100, 30) == leases.JobLimits(100, 30)
    limits = leases.JobLimits(60, 5)
    assert limits.deadline(AT) == AT + dt.timedelta(seconds=60)
    assert limits.lease_expiry(AT) == AT + dt.timedelta(seconds=5)
    assert leases.JobLimits(60, None).lease_expiry(AT) is None


def test_the_failed_event_is_an_ordinary_valid_event_with_the_specs_message():
    lost = leases.Lost(42, "heartbeat", 30, AT)
    event = lost.failed_event()
    assert (event.job_id, event.type, event.occurred_at, event.seq) == (42, "failed", AT, 0)
    assert event.message == "no event for 30 s: the worker is presumed lost"
    assert leases.Lost(42, "timeout", 3600, AT).message == "not finished within 3600 s"
    # SPEC §11: error.code says why, for machines
    assert (event.error_code, event.error_details_json) == ("lost", None)
    timed_out = leases.Lost(42, "timeout", 3600, AT).failed_event()
    assert timed_out.error_code == "timeout"
    # What the consumer would parse from the wire is the same event.
    assert events.parse(orjson.dumps(event.to_wire())) == event
    assert events.parse(orjson.dumps(timed_out.to_wire())) == timed_out


def test_the_event_id_depends_on_the_job_and_the_reason_only():
    first = leases.Lost(42, "heartbeat", 30, AT).event_id
    assert first == leases.Lost(42, "heartbeat", 99, AT + dt.timedelta(hours=1)).event_id
    assert first == str(uuid.uuid5(leases.EVENT_NAMESPACE, "42:heartbeat"))
    assert first != leases.Lost(42, "timeout", 30, AT).event_id
    assert first != leases.Lost(43, "heartbeat", 30, AT).event_id
    assert uuid.UUID(first).version == 5


def test_one_decision_per_job_by_the_limit_that_ran_out_first():
    expired = [
        leases.Expired(2, "timeout", 60, AT - dt.timedelta(seconds=5)),
        leases.Expired(2, "heartbeat", 10, AT - dt.timedelta(seconds=9)),
        leases.Expired(1, "heartbeat", 10, AT - dt.timedelta(seconds=1)),
        leases.Expired(1, "timeout", 60, AT - dt.timedelta(seconds=1)),  # a tie: the deadline
        leases.Expired(3, "timeout", 60, AT),
    ]
    decided = leases.decide(expired, AT)
    assert [(lost.job_id, lost.reason, lost.limit_s) for lost in decided] == [
        (1, "timeout", 60),
        (2, "heartbeat", 10),
        (3, "timeout", 60),
    ]
    assert {lost.decided_at for lost in decided} == {AT}
    assert leases.decide(reversed(expired), AT) == decided


def test_a_late_real_success_beats_the_trackers_failure_by_the_merge_rule():
    start = AT - dt.timedelta(minutes=5)
    succeeded = events.new_event(1, "succeeded", "Deployed.", occurred_at=AT - dt.timedelta(seconds=1))
    failed = leases.Lost(1, "heartbeat", 30, AT).failed_event()
    state = merge.merge(merge.JobState(start, "created"), [failed])
    assert state.status == merge.FAILED
    state = merge.merge(state, [succeeded])
    assert (state.status, state.message, state.end_time) == (merge.SUCCEEDED, "Deployed.", succeeded.occurred_at)


def test_caught_up_means_no_ready_message():
    assert leases.caught_up(0)
    assert not leases.caught_up(1)


def test_purge_cutoff():
    assert leases.purge_cutoff(AT, 2) == AT - dt.timedelta(days=2)
    assert leases.purge_cutoff(AT, 0) == AT
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError):
            leases.purge_cutoff(AT, bad)
    assert timefmt.format_time(leases.purge_cutoff(AT, 0.5)) == "2026-11-30T00:00:00.000000Z"


def test_settings_defaults_and_bounds():
    settings = Settings.from_env({})
    assert (settings.job_timeout_s, settings.heartbeat_timeout_s) == (86400, 0)
    assert (settings.reap_interval_s, settings.retention_days) == (5.0, 0.0)
    read = Settings.from_env(
        {
            "TRACKER_JOB_TIMEOUT_S": "600",
            "TRACKER_HEARTBEAT_TIMEOUT_S": "30",
            "TRACKER_REAP_INTERVAL_S": "0.5",
            "TRACKER_RETENTION_DAYS": "7",
        }
    )
    assert (read.job_timeout_s, read.heartbeat_timeout_s, read.reap_interval_s, read.retention_days) == (
        600,
        30,
        0.5,
        7,
    )
    assert Settings.from_env(read.to_env()) == read
    for name, value in (
        ("TRACKER_JOB_TIMEOUT_S", "0"),
        ("TRACKER_JOB_TIMEOUT_S", "2592001"),
        ("TRACKER_HEARTBEAT_TIMEOUT_S", "-1"),
        ("TRACKER_REAP_INTERVAL_S", "0"),
        ("TRACKER_RETENTION_DAYS", "-1"),
        ("TRACKER_RETENTION_DAYS", "nan"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


def test_the_client_sends_only_the_fields_it_is_given(monkeypatch):
    from tracker.client import ApiClient

    sent: list[object] = []

    def call(method: str, path: str, body: object = None) -> dict[str, object]:
        sent.append(body)
        return {"response": {"id": 7}}

    client = ApiClient("http://127.0.0.1:1", token="t")
    monkeypatch.setattr(client, "_call", call)
    assert client.create_job("Deploying.", timeout_s=600, heartbeat_timeout_s=30) == 7
    assert client.create_job() == 7
    assert client.create_job(kind="export", labels={"env": "prod"}) == 7  # SPEC §11
    assert client.create_job(labels={}) == 7
    assert sent == [
        {"message": "Deploying.", "timeout_s": 600, "heartbeat_timeout_s": 30},
        {},
        {"kind": "export", "labels": {"env": "prod"}},
        {},
    ]


@pytest.mark.parametrize("flag", ["--timeout", "--heartbeat-timeout"])
def test_jobs_create_refuses_a_bad_limit_before_calling_the_api(monkeypatch, capsys, flag):
    from tracker import cli

    monkeypatch.setenv("TRACKER_API_TOKEN", "t")
    monkeypatch.setenv("TRACKER_API_URL", "http://127.0.0.1:1")
    assert cli.main(["jobs", "create", "x", flag, "0"]) == 2
    assert f"{flag} must be an integer from 1 to 2592000" in capsys.readouterr().err
