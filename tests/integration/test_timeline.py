"""The timeline (SPEC §7) on SQLite and PostgreSQL: every accepted event of a job once, in merge-key
order, deleted with its job; and GET /api/{v}/async_status/{id}/events, which answers it."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.store_variants import HistoryOnly
from tests.integration.test_api import Api, assert_alert
from tests.spec_texts import ID_NOT_INTEGER, MISSING_READ, NOT_FOUND, NOT_IMPLEMENTED, UNAUTHORIZED, no_such_path
from tracker.events import Event, new_event
from tracker.store import JobNotFound, JobStore, make_engine, migrate, open_job_store

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
FIELDS = ["event_id", "type", "occurred_at", "received_at", "seq", "message"]  # SPEC §7, in its order
BASE = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def as_kept(event: Event) -> tuple[str, str, dt.datetime, int, str | None]:
    return event.event_id, event.type, event.occurred_at, event.seq, event.message


def timeline_of(store: JobStore, job_id: int) -> list[tuple[str, str, dt.datetime, int, str | None]]:
    return [(e.event_id, e.type, e.occurred_at, e.seq, e.message) for e in store.timeline(job_id)]


def spec_order(events: list[Event]) -> list[Event]:
    """SPEC §3's key, written out here: occurred_at, seq, event_id as lowercase text; one per event_id."""
    unique = {event.event_id: event for event in events}.values()
    return sorted(unique, key=lambda e: (e.occurred_at, e.seq, e.event_id.lower()))


# ---- the store


@pytest.fixture
def store(engine: sa.Engine) -> JobStore:
    return open_job_store(engine)


def test_a_new_job_has_an_empty_timeline_and_a_missing_one_none(store: JobStore) -> None:
    job = store.create_job()
    assert store.timeline(job.id) == []
    with pytest.raises(JobNotFound):
        store.timeline(job.id + 1)


def test_duplicates_are_kept_once_with_their_first_receipt(store: JobStore) -> None:
    job = store.create_job()
    twice = new_event(job.id, "progress", "halfway", occurred_at=BASE)
    before = dt.datetime.now(dt.UTC)
    store.apply([twice, twice])  # twice in one batch
    after = dt.datetime.now(dt.UTC)
    [kept] = store.timeline(job.id)
    assert as_kept(twice) == (kept.event_id, kept.type, kept.occurred_at, kept.seq, kept.message)
    assert kept.received_at is not None
    # The database's clock (PostgreSQL's now()) and ours may differ by a little; not by a second.
    assert before - dt.timedelta(seconds=1) <= kept.received_at <= after + dt.timedelta(seconds=1)
    store.apply([twice, new_event(job.id, "succeeded", None, occurred_at=BASE + dt.timedelta(seconds=1))])
    again = store.timeline(job.id)
    assert [e.event_id for e in again].count(twice.event_id) == 1
    assert again[0] == kept  # the redelivery changed nothing, not even the receipt
    assert len(again) == 2


def test_every_accepted_event_is_kept_even_those_the_merge_rule_hides(store: JobStore) -> None:
    job = store.create_job()
    heartbeat = new_event(job.id, "progress", None, occurred_at=BASE)
    failed = new_event(job.id, "failed", "broke", occurred_at=BASE + dt.timedelta(seconds=2))
    late = new_event(job.id, "progress", "after the end", occurred_at=BASE + dt.timedelta(seconds=3))
    second_terminal = new_event(job.id, "succeeded", "too late", occurred_at=BASE + dt.timedelta(seconds=4))
    earlier = new_event(job.id, "progress", "before", occurred_at=BASE + dt.timedelta(seconds=1))
    store.apply([failed, late])
    store.apply([second_terminal, heartbeat])
    store.apply([earlier])
    row = store.get_job(job.id)
    assert (row.status, row.message) == ("FAILED", "broke")
    assert timeline_of(store, job.id) == [as_kept(e) for e in (heartbeat, earlier, failed, late, second_terminal)]


def test_events_of_a_job_with_no_row_are_not_kept(store: JobStore, engine: sa.Engine) -> None:
    job = store.create_job().id
    applied = store.apply([new_event(job + 1, "progress", "nobody's"), new_event(job, "progress", "mine")])
    assert applied.missing_jobs == {job + 1}
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT job_id FROM async_status_event").scalars().all() == [job]


def test_deleting_a_job_deletes_its_events(store: JobStore, engine: sa.Engine) -> None:
    kept, deleted = store.create_job().id, store.create_job().id
    store.apply([new_event(job_id, "progress", None) for job_id in (kept, deleted, kept)])
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM async_status WHERE id = :id"), {"id": deleted})
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT job_id FROM async_status_event").scalars().all() == [kept, kept]
    with pytest.raises(JobNotFound):
        store.timeline(deleted)


def test_ties_on_time_are_ordered_by_seq_then_event_id(store: JobStore) -> None:
    job = store.create_job()
    ids = ["ffffffff-0000-4000-8000-000000000000", "00000000-0000-4000-8000-00000000000a"]
    by_seq = [new_event(job.id, "progress", f"seq {n}", seq=n, occurred_at=BASE) for n in (2, 1)]
    by_id = [new_event(job.id, "progress", None, seq=5, occurred_at=BASE, event_id=i) for i in ids]
    store.apply(by_id + by_seq)
    assert timeline_of(store, job.id) == [as_kept(e) for e in (by_seq[1], by_seq[0], by_id[1], by_id[0])]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # the benchmark's database
def test_the_benchmarks_store_keeping_no_timeline_keeps_only_what_the_merge_needs_again(engine: sa.Engine) -> None:
    """#1d's "off" side: the message events inside R, and the same rows."""
    store = HistoryOnly(engine)
    job = store.create_job("created")
    heartbeat = new_event(job.id, "progress", None, occurred_at=BASE)
    working = new_event(job.id, "progress", "working", occurred_at=BASE + dt.timedelta(seconds=1))
    later = new_event(job.id, "progress", "later", occurred_at=BASE + dt.timedelta(seconds=3))
    failed = new_event(job.id, "failed", None, occurred_at=BASE + dt.timedelta(seconds=2))
    store.apply([heartbeat, working, later])
    store.apply([failed])  # before "later", which stays kept from the first batch, outside R now
    assert timeline_of(store, job.id) == [as_kept(working), as_kept(later)]
    row = store.get_job(job.id)
    assert (row.status, row.message) == ("FAILED", "working")


# Unique event ids (a redelivery is the same event again, added below); few instants and seqs,
# so that ties are common and the event_id often decides.
TIMELINE = st.lists(
    st.tuples(
        st.sampled_from(["progress", "progress", "succeeded", "failed"]),
        st.one_of(st.none(), st.sampled_from(["a", "b", "é"])),
        st.integers(min_value=0, max_value=3),  # µs after BASE
        st.integers(min_value=0, max_value=2),  # seq
        st.uuids().map(str),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda fields: fields[-1],
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('timeline') / 'tracker.db'}"
        engine = make_engine(url)
        migrate(engine)
    else:
        engine = make_engine(request.getfixturevalue("postgres_url"))
    yield open_job_store(engine)
    engine.dispose()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=TIMELINE, data=st.data())
def test_any_deliveries_give_the_events_once_in_merge_key_order(module_store: JobStore, fields, data) -> None:
    job = module_store.create_job()
    events = [
        new_event(job.id, kind, message, seq=seq, occurred_at=BASE + dt.timedelta(microseconds=us), event_id=event_id)
        for kind, message, us, seq, event_id in fields
    ]
    redelivered = data.draw(st.lists(st.sampled_from(events), max_size=4))
    deliveries = data.draw(st.permutations(events + redelivered))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(deliveries)), max_size=3)))
    for start, end in zip([0, *cuts], [*cuts, len(deliveries)], strict=True):
        if deliveries[start:end]:
            module_store.apply(deliveries[start:end])
    assert timeline_of(module_store, job.id) == [as_kept(e) for e in spec_order(events)]


# ---- GET /api/{v}/async_status/{id}/events


def test_the_timeline_answers_every_event_in_merge_key_order_as_get_formats_times(api: Api) -> None:
    job_id = api.jobs.create_job().id
    first = new_event(job_id, "progress", None, occurred_at=BASE + dt.timedelta(microseconds=7), seq=3)
    done = new_event(job_id, "succeeded", "all done", occurred_at=BASE + dt.timedelta(seconds=5))
    api.jobs.apply([done])
    api.jobs.apply([first, done])
    result = api.client.simulate_get(f"/api/5.0/async_status/{job_id}/events", headers=api.bearer("ops"))
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/json"
    body = result.json["response"]
    assert [list(event) for event in body] == [FIELDS, FIELDS]
    assert [(e["event_id"], e["type"], e["occurred_at"], e["seq"], e["message"]) for e in body] == [
        (first.event_id, "progress", "2026-06-01T12:00:00.000007Z", 3, None),
        (done.event_id, "succeeded", "2026-06-01T12:00:05.000000Z", 0, "all done"),
    ]
    assert all(TIME.fullmatch(e["received_at"]) for e in body)
    assert body[0]["received_at"] >= body[1]["received_at"]  # "first" arrived second
    padded = f"+{job_id:05d}"  # the id read as GET of the job reads it
    again = api.client.simulate_get(f"/api/4.0/async_status/{padded}/events", headers=api.bearer("admin"))
    assert again.json == result.json


def test_a_job_with_no_events_yet_has_an_empty_timeline(api: Api) -> None:
    job_id = api.jobs.create_job().id
    for version in ("4.0", "4.1", "5.0"):
        result = api.client.simulate_get(f"/api/{version}/async_status/{job_id}/events", headers=api.bearer("ops"))
        assert (result.status_code, result.json) == (200, {"response": []})


def test_the_timeline_answers_400_and_404_exactly_as_get_of_the_job(api: Api) -> None:
    headers = api.bearer("ops")
    for text in ("abc", "1.5", "1e3", "0x10", "9223372036854775808", "-9223372036854775809", "%201"):
        assert_alert(
            api.client.simulate_get(f"/api/5.0/async_status/{text}/events", headers=headers), 400, ID_NOT_INTEGER
        )
    missing = api.jobs.create_job().id + 1000
    for text in ("0", "-1", "-9223372036854775808", str(missing), "9223372036854775807"):
        assert_alert(api.client.simulate_get(f"/api/5.0/async_status/{text}/events", headers=headers), 404, NOT_FOUND)
    assert_alert(api.client.simulate_get("/api/5.1/async_status/1/events", headers=headers), 501, NOT_IMPLEMENTED)
    path = "/api/5.0/async_status/1/events/more"
    assert_alert(api.client.simulate_get(path, headers=headers), 404, no_such_path(path))


def test_the_timeline_needs_credentials_and_the_read_permission(api: Api) -> None:
    job_id = api.jobs.create_job().id
    url = f"/api/5.0/async_status/{job_id}/events"
    assert_alert(api.client.simulate_get(url), 401, UNAUTHORIZED)
    assert_alert(api.client.simulate_get(url, headers={"Authorization": "Bearer garbage"}), 401, UNAUTHORIZED)
    # Who is asking is settled before what is asked.
    assert_alert(api.client.simulate_get("/api/5.0/async_status/abc/events"), 401, UNAUTHORIZED)
    assert_alert(api.client.simulate_get(url, headers=api.bearer("viewer")), 403, MISSING_READ)
    assert_alert(
        api.client.simulate_get("/api/5.0/async_status/abc/events", headers=api.bearer("viewer")), 403, MISSING_READ
    )
    cookie = api.login("ops").cookies["access_token"].value
    assert api.client.simulate_get(url, cookies={"access_token": cookie}).status_code == 200


def test_the_event_ids_of_the_timeline_are_those_published(api: Api) -> None:
    job_id = api.jobs.create_job().id
    upper = str(uuid.uuid4()).upper()
    event = new_event(job_id, "progress", "x", event_id=upper)
    api.jobs.apply([event])
    body = api.client.simulate_get(f"/api/5.0/async_status/{job_id}/events", headers=api.bearer("ops")).json
    assert [e["event_id"] for e in body["response"]] == [upper.lower()]  # as the merge key reads it
