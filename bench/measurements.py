"""The five measurements of the issue, each beside its reference from the same run."""

from __future__ import annotations

import base64
import dataclasses
import functools
import gc
import itertools
import random
import secrets
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
import sqlalchemy as sa

from bench import list_filters, load, processes, report, workload
from bench.capacity import capacity
from bench.many_streams import many_streams
from bench.processes import ProcessFailed, bench_command, free_port, tracker_command
from bench.references import percentiles_ms
from bench.report import Result
from bench.services import BenchDatabase, MessagesLost, QueueWatcher
from bench.testbed import Scale, Testbed
from tracker import webhooks
from tracker.config import Settings

_DONE_CHECK = 2000  # final events whose rows are checked for completion (several batches' worth)
_MB = 1024 * 1024
_SCALE_WARMUP = 300  # GETs before #5 starts its clock
_QUIET_S = 30.0  # an empty queue this long with work still undone means messages were lost


def ingest(bed: Testbed) -> list[Result]:
    """#1, #1b and #1c: a full queue drained by one consumer, against a bare drain, a naive consumer and a
    bare pipeline."""
    scale, db = bed.scale, bed.database
    jobs = scale.ingest_jobs
    per_job = scale.ingest_events // jobs
    settings = bed.settings("ingest")
    db.empty()
    ids = db.seed_jobs(jobs)
    work = workload.lifecycles(ids, per_job, random.Random(1))
    count = len(work.bodies)
    done_check = work.final_jobs[-_DONE_CHECK:]
    bed.progress.say(f"ingest: {count:,} events over {jobs:,} jobs, queue {settings.queue} (quorum)")

    # The bare drain is one thread of pika: whatever else the machine does that second shows in
    # its figure at once (single runs of it differ by a quarter here). So the two alternate, and
    # the ratio is of their means, as for #3.
    limits, pipelines, trackers, unmetered, complete = [], [], [], [], True
    for round_number in range(scale.ingest_rounds):
        if round_number:
            db.empty()
            if db.seed_jobs(jobs) != ids:  # every round folds the same events into the same rows
                raise RuntimeError("the jobs of a new ingest round did not get the ids of the first")
        if bed.metrics_ab and round_number % 2 == 0:
            # The same drain with metrics off: before the one with them in even rounds, after in odd ones.
            unmetered.append(_unmetered_drain(bed, settings, work, ids, done_check))
        limits.append(
            _drain(
                bed,
                settings,
                work.bodies,
                "bare pika drain",
                _bare_drain(settings, count, ack_every=settings.batch_size),
                done=None,
            )
        )
        # It writes a copy of the rows of its own, not the rows the tracker is about to fold.
        pipelines.append(
            _drain(bed, settings, work.bodies, "bare pipeline", _bare_pipeline(settings, count), done=None)
        )
        trackers.append(
            _drain(
                bed,
                settings,
                work.bodies,
                "tracker consume",
                tracker_command("consume"),
                done=lambda: db.pending_among(done_check) == 0,
            )
        )
        complete = _complete(bed, ids, count) and complete
        if bed.metrics_ab and round_number % 2 == 1:
            unmetered.append(_unmetered_drain(bed, settings, work, ids, done_check))
    limit_rate = statistics.fmean(d.rate for d in limits)
    pipeline_rate = statistics.fmean(d.rate for d in pipelines)
    tracker_rate = statistics.fmean(d.rate for d in trackers)
    # Context, not a target: the same drain acking each message, as most consumers do. The
    # issue's "roughly 14,000 [...] 19,000 on a quorum queue" for a bare drain matches this one;
    # the reference above acks as the tracker does, every batch, and is about three times faster.
    ack_each = _drain(
        bed,
        settings,
        work.bodies,
        "bare pika drain acking each message",
        _bare_drain(settings, count, ack_every=1),
        done=None,
    )
    db.empty()
    db.seed_jobs(jobs)  # the naive consumer starts from the same rows
    first = work.bodies[: scale.naive_events]
    naive = _drain(
        bed,
        settings,
        first,
        "naive consumer",
        bench_command(
            "references",
            "naive",
            "--amqp-url",
            settings.amqp_url,
            "--queue",
            settings.queue,
            "--count",
            str(len(first)),
            "--prefetch",
            "1",
            "--database-url",
            settings.database_url,
        ),
        done=None,
    )  # it commits each event before acking it, and exits after the last

    bed.run.charts.append(
        report.line_chart(
            "Ingest, last round: events taken from the queue per second (the shorter line: the bare pika drain)",
            "seconds",
            "events/s",
            [limits[-1].per_second, trackers[-1].per_second],
        )
    )
    common = {
        "events": count,
        "jobs": jobs,
        "queue_type": "quorum",
        "batch_size": settings.batch_size,
        "prefetch": settings.prefetch,
        "flush_ms": settings.flush_ms,
        "rounds": scale.ingest_rounds,
    }
    return [
        Result(
            "1 ingest",
            "events/s drained and committed by one consumer",
            "events/s",
            tracker_rate,
            limit_rate,
            "bare pika drain: parse and ack only",
            ">= 0.7x the limit",
            complete and tracker_rate >= 0.7 * limit_rate,
            {
                **common,
                "tracker_per_round": [round(d.rate) for d in trackers],
                "limit_per_round": [round(d.rate) for d in limits],
                "tracker_cpu_s": [d.cpu_s for d in trackers],
                "rows_complete": complete,
                "ack_each_drain": round(ack_each.rate),
                "ratio_to_ack_each_drain": round(tracker_rate / ack_each.rate, 2),
                **_metrics_ab("tracker_metrics_off_per_round", [d.rate for d in trackers], [d.rate for d in unmetered]),
            },
        ),
        Result(
            "1b ingest",
            "events/s drained and committed by one consumer",
            "events/s",
            tracker_rate,
            naive.rate,
            "naive: one event per transaction, prefetch 1",
            ">= 5x the naive",
            complete and tracker_rate >= 5 * naive.rate,
            {**common, "naive_events": len(first), "naive_seconds": round(naive.seconds, 2)},
        ),
        Result(
            "1c ingest",
            "events/s drained and committed by one consumer, every event kept in its job's timeline",
            "events/s",
            tracker_rate,
            pipeline_rate,
            "bare pipeline: the drain plus one UPDATE of status and message per event (a plain table of "
            "its own), committed before the ack",
            ">= 0.9x the bare pipeline",
            complete and tracker_rate >= 0.9 * pipeline_rate,
            {
                **common,
                "tracker_per_round": [round(d.rate) for d in trackers],
                "pipeline_per_round": [round(d.rate) for d in pipelines],
                "pipeline_ratio_to_bare_drain": round(pipeline_rate / limit_rate, 3),
                "rows_complete": complete,
            },
        ),
    ]


def _unmetered_drain(
    bed: Testbed, settings: Settings, work: workload.Workload, ids: range, done: list[int]
) -> _Drained:
    """``tracker consume`` with metrics off (``--metrics-ab``), from the rows every round starts from, left so."""
    db = bed.database
    _reseed(db, ids)
    drained = _drain(
        bed,
        settings.with_(metrics=False),
        work.bodies,
        "tracker consume, metrics off",
        tracker_command("consume"),
        done=lambda: db.pending_among(done) == 0,
    )
    _complete(bed, ids, len(work.bodies))
    _reseed(db, ids)
    return drained


def _reseed(db: BenchDatabase, ids: range) -> None:
    db.empty()
    if db.seed_jobs(len(ids)) != ids:
        raise RuntimeError("the jobs of an ingest run did not get the ids of the first")


def _metrics_ab(key: str, on: list[float], off: list[float]) -> dict[str, Any]:
    """The A/B of metrics on and off for a result's details (empty when it was not run)."""
    if not off:
        return {}
    return {
        key: [round(rate) for rate in off],
        "metrics_on_mean": round(statistics.fmean(on)),
        "metrics_off_mean": round(statistics.fmean(off)),
        "metrics_cost": round(1 - statistics.fmean(on) / statistics.fmean(off), 3),
    }


def _bare_pipeline(settings: Settings, count: int) -> list[str]:
    """``references pipeline`` of ``count`` messages: the bare drain writing rows, a batch per ``batch_size``."""
    return bench_command(
        "references",
        "pipeline",
        "--amqp-url",
        settings.amqp_url,
        "--queue",
        settings.queue,
        "--count",
        str(count),
        "--prefetch",
        str(settings.prefetch),
        "--ack-every",
        str(settings.batch_size),
        "--database-url",
        settings.database_url,
    )


def _bare_drain(settings: Settings, count: int, ack_every: int) -> list[str]:
    """``references drain`` of ``count`` messages from the queue, with the tracker's prefetch."""
    return bench_command(
        "references",
        "drain",
        "--amqp-url",
        settings.amqp_url,
        "--queue",
        settings.queue,
        "--count",
        str(count),
        "--prefetch",
        str(settings.prefetch),
        "--ack-every",
        str(ack_every),
    )


class _Drained:
    def __init__(self, count: int, seconds: float, per_second: list[float], cpu_s: float | None) -> None:
        self.rate = count / seconds
        self.seconds = seconds
        self.per_second = per_second
        self.cpu_s = cpu_s


def _drain(
    bed: Testbed,
    settings: Settings,
    bodies: list[bytes],
    name: str,
    command: list[str],
    done: Callable[[], bool] | None,
) -> _Drained:
    """Fill the queue, start ``command``, and time it from the first delivery to ``done``.

    Every consumer is timed the same way, from outside: it starts when the queue's ready count
    first drops, and ends when ``done()`` holds with the queue empty (``done`` None: when the
    process exits, which the bare drain and the naive consumer do after their last ack).
    """
    bed.progress.say(f"ingest: filling the queue for {name}")
    bed.broker.fill(settings, bodies, on_progress=lambda n: bed.progress.tick("fill", f"  published {n:,}"))
    watcher = QueueWatcher(bed.broker, settings.queue)
    total = watcher.ready()
    child = bed.start(name.replace(" ", "-"), command, settings, capture_stdout=done is None)
    try:
        deadline = time.monotonic() + 60
        while watcher.ready() >= total:
            child.check_alive()
            if time.monotonic() > deadline:
                raise ProcessFailed(f"{name} consumed nothing within 60 s:\n{child.tail()}")
            time.sleep(0.005)
        started = time.monotonic()
        cpu_before = child.cpu_seconds()
        consumed_at: list[tuple[float, int]] = [(0.0, 0)]
        emptied = None
        while True:
            ready = watcher.ready()
            now = time.monotonic()
            emptied = (emptied or now) if ready == 0 else None
            if emptied is not None and now - emptied > _QUIET_S:
                raise MessagesLost(f"{name}: the queue has been empty for {_QUIET_S:.0f} s and the work is not done")
            if now - started - consumed_at[-1][0] >= 1.0:
                consumed_at.append((now - started, total - ready))
                rate = (consumed_at[-1][1] - consumed_at[-2][1]) / (consumed_at[-1][0] - consumed_at[-2][0])
                bed.progress.tick("drain", f"  {name}: {total - ready:,}/{total:,} taken, ~{rate:,.0f}/s")
            if ready == 0 and (not child.alive if done is None else done()):
                break
            if done is not None:
                child.check_alive()
            time.sleep(0.01 if ready == 0 else 0.05)
        seconds = time.monotonic() - started
        if done is None:
            cpu = None  # it has exited; its own report has its times
            own = orjson.loads(child.stdout(timeout=10).strip().splitlines()[-1])
            bed.progress.say(f"  {name}: by its own clock {own['events'] / (own['last_at'] - own['first_at']):,.0f}/s")
        else:
            cpu = round(child.cpu_seconds() - cpu_before, 2)
    finally:
        watcher.close()
        child.stop()
    per_second = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(consumed_at)]
    bed.progress.say(f"  {name}: {total:,} events in {seconds:.2f} s = {total / seconds:,.0f}/s")
    return _Drained(total, seconds, per_second, cpu)


def _complete(bed: Testbed, ids: range, events: int) -> bool:
    """Whether every job is finished and every event is in the timeline: the tracker did the work."""
    with bed.database.engine.connect() as conn:
        kept = conn.exec_driver_sql("SELECT count(*) FROM async_status_event").scalar_one()
    pending = bed.database.pending_among(list(ids))
    if kept != events or pending:
        bed.run.notes.append(
            f"ingest: after the tracker's drain {pending} jobs were PENDING and the "
            f"timeline held {kept} of {events} events"
        )
    return kept == events and pending == 0


def latency(bed: Testbed) -> list[Result]:
    """#2: publish -> visible through GET at a steady rate, against publish -> consume on the same broker.

    The two alternate ``scale.latency_rounds`` times, each round from fresh rows, and each side's
    percentiles are of all its rounds' samples together: a stall of the machine during one round
    (seen here: a reference p99 of 83 ms against its usual 3-4 ms) then moves the p99 of neither
    side by much, instead of deciding the target alone.
    """
    scale = bed.scale
    settings = bed.settings("latency")
    count = round(scale.latency_rate * scale.latency_s)
    bed.progress.say(
        f"latency: {scale.latency_rate:,.0f} events/s for {scale.latency_s:.0f} s, "
        f"every {scale.latency_sample_every}th timed, {scale.latency_rounds} round(s)"
    )
    rounds = [_latency_round(bed, settings, count, n) for n in range(scale.latency_rounds)]
    references, seens = [reference for reference, _ in rounds], [seen for _, seen in rounds]
    round_trips = [s for reference in references for s in reference["latencies_s"]]
    visible = [s for seen in seens for s in seen["latencies_s"]]
    lost = sum(seen["lost"] for seen in seens)
    reference_cuts, seen_cuts = percentiles_ms(round_trips), percentiles_ms(visible)

    bed.run.charts.append(
        report.bar_chart(
            "Latency at 1,000 events/s, ms",
            "ms",
            [
                ("round trip p50", reference_cuts["p50_ms"]),
                ("round trip p99", reference_cuts["p99_ms"]),
                ("GET shows it p50", seen_cuts["p50_ms"]),
                ("GET shows it p99", seen_cuts["p99_ms"]),
            ],
        )
    )
    details = {
        "rate": round(statistics.fmean(seen["rate"] for seen in seens)),
        "reference_rate": round(statistics.fmean(reference["published_rate"] for reference in references)),
        "rounds": scale.latency_rounds,
        "samples": len(visible),
        "lost": lost,
        "reference_received": sum(reference["received"] for reference in references),
        "flush_ms": settings.flush_ms,
    }
    return _beside_round_trip(
        "2 latency",
        "publish -> visible through GET",
        seen_cuts,
        reference_cuts,
        slack_ms=25,
        lost=lost,
        details=details,
        p99_details={
            "p90_ms": seen_cuts["p90_ms"],
            "reference_p90_ms": reference_cuts["p90_ms"],
            "p99_per_round_ms": [_rounded(seen["p99_ms"]) for seen in seens],
            "reference_p99_per_round_ms": [_rounded(reference["p99_ms"]) for reference in references],
        },
    )


def _latency_round(bed: Testbed, settings: Settings, count: int, round_number: int) -> tuple[dict, dict]:
    """One round of #2 from fresh rows: the reference's report, then the tracker's (raw latencies included)."""
    scale, db = bed.scale, bed.database
    db.empty()
    background = db.seed_jobs(2000)
    samples = db.seed_jobs(count // scale.latency_sample_every + 10)
    token = db.add_reader(settings)
    pace = [
        "--amqp-url",
        settings.amqp_url,
        "--exchange",
        settings.exchange,
        "--rate",
        str(scale.latency_rate),
        "--duration-s",
        str(scale.latency_s),
        "--first-job",
        str(background.start),
        "--last-job",
        str(background.stop - 1),
    ]

    bed.progress.say(f"  round {round_number + 1}, reference: publish -> consume round trip")
    reference = _round_trip(bed, settings, count, pace, f"{round_number}")
    bed.progress.say(
        f"  round {round_number + 1}, tracker: publish -> visible through GET (tracker consume + tracker api)"
    )
    port = free_port()
    api_settings = settings.with_(bind=f"127.0.0.1:{port}")
    consumer = bed.start(f"latency-consume-{round_number}", tracker_command("consume"), api_settings)
    api = bed.start(f"latency-api-{round_number}", tracker_command("api"), api_settings)
    consumer.wait_for_log("consuming ")
    api.wait_for_port(port)
    # The port opens before the workers have built their apps: a second of GETs (of jobs the
    # probe does not time) so that every worker is serving when the timed events start, as #3 does.
    load.http_load(port, background, token, 1.0, 4, 1, bed.out_dir)
    prober = bed.start(
        f"visibility-{round_number}",
        bench_command(
            "load",
            "visibility",
            *pace,
            "--port",
            str(port),
            "--token",
            token,
            "--first-sample-job",
            str(samples.start),
            "--last-sample-job",
            str(samples.stop - 1),
            "--sample-every",
            str(scale.latency_sample_every),
        ),
        api_settings,
        capture_stdout=True,
    )
    seen = orjson.loads(prober.stdout(timeout=scale.latency_s + 120))
    api.stop()
    consumer.stop()
    bed.progress.say(
        f"  round {round_number + 1}: GET shows it p99 {_ms(seen['p99_ms'])}, round trip p99 {_ms(reference['p99_ms'])}"
    )
    return reference, seen


def _round_trip(bed: Testbed, settings: Settings, count: int, pace: list[str], name: str) -> dict[str, Any]:
    """The reference of #2 and #2b: ``count`` events published at ``pace``, each timed from its
    publish until a plain consumer of the same queue has it; the receiver's report."""
    receiver = bed.start(
        f"roundtrip-{name}",
        bench_command(
            "references",
            "roundtrip",
            "--amqp-url",
            settings.amqp_url,
            "--queue",
            settings.queue,
            "--count",
            str(count),
            "--prefetch",
            str(settings.prefetch),
        ),
        settings,
        capture_stdout=True,
    )
    receiver.wait_for_log("ready")
    publisher = bed.start(f"publisher-{name}", bench_command("load", "publish", *pace), settings, capture_stdout=True)
    published = orjson.loads(publisher.stdout(timeout=bed.scale.latency_s + 60))
    return {**orjson.loads(receiver.stdout(timeout=60)), "published_rate": published["rate"]}


def waiting(bed: Testbed) -> list[Result]:
    """#2b: publish a job's end -> a GET with ``Prefer: wait`` that was waiting for it is answered,
    against publish -> consume on the same broker, at #2's rate and pace, in the same run."""
    return _told_beside_round_trip(
        bed,
        "wait",
        "a job's end awaited with Prefer: wait",
        "waiting GET answered",
        "2b wait",
        "publish a job's end -> waiting GET answered",
    )


def streaming(bed: Testbed) -> list[Result]:
    """#2c: publish a job's end -> a stream of the list (SPEC §13) open since before shows it,
    against publish -> consume on the same broker, at #2's rate and pace, in the same run."""
    return _told_beside_round_trip(
        bed,
        "stream",
        "a job's end read from a stream",
        "stream frame read",
        "2c stream",
        "publish a job's end -> stream frame read",
    )


def webhook(bed: Testbed) -> list[Result]:
    """#2d: publish a job's end -> its webhook (SPEC §13) POSTed by the consumer's deliverer reaches a
    receiver of the load client's own, against publish -> consume on the same broker, at #2's rate
    and pace, in the same run."""
    return _told_beside_round_trip(
        bed,
        "webhook",
        "a job's end POSTed to its notify_url",
        "webhook received",
        "2d webhook",
        "publish a job's end -> webhook received",
    )


_CLIENT_MODES = {"wait": "waiting", "stream": "streaming", "webhook": "receiving"}  # bench.load's mode of each kind


def _webhook_secret() -> str:
    """A fresh TRACKER_WEBHOOK_SECRET: the Standard Webhooks form, 32 random bytes."""
    return webhooks.SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _told_beside_round_trip(bed: Testbed, kind: str, sampled: str, told: str, name: str, figure: str) -> list[Result]:
    """The rounds of #2b, #2c and #2d: publish -> consume on the broker (the reference), then, with a
    consumer and an API of the round's own, publish -> a client told of the job's end (``bench.load``'s
    ``waiting``, ``streaming`` or ``receiving`` mode, by ``kind``), at #2's rate and pace.

    For ``webhook`` the sampled jobs have a notify_url at the client's receiver, on a port chosen
    afresh each round, which the round's consumer and API are allowed to send to."""
    scale, db = bed.scale, bed.database
    settings = bed.settings(kind)
    count = round(scale.latency_rate * scale.latency_s)
    bed.progress.say(
        f"{kind}: {scale.latency_rate:,.0f} events/s for {scale.latency_s:.0f} s, every "
        f"{scale.latency_sample_every}th {sampled}, {scale.latency_rounds} round(s)"
    )
    references: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    for round_number in range(scale.latency_rounds):
        db.empty()
        round_settings = settings
        receiver_port: int | None = None
        notify_url: str | None = None
        if kind == "webhook":
            receiver_port = free_port()
            receiver = f"http://127.0.0.1:{receiver_port}"
            round_settings = settings.with_(webhook_allow=receiver, webhook_secret=_webhook_secret())
            notify_url = f"{receiver}/bench"
        background = db.seed_jobs(2000)
        samples = db.seed_jobs(count // scale.latency_sample_every + 10, terminal_every=0, notify_url=notify_url)
        token = db.add_reader(settings)
        pace = [
            *("--amqp-url", settings.amqp_url, "--exchange", settings.exchange),
            *("--rate", str(scale.latency_rate), "--duration-s", str(scale.latency_s)),
            *("--first-job", str(background.start), "--last-job", str(background.stop - 1)),
        ]
        bed.progress.say(f"  round {round_number + 1}, reference: publish -> consume round trip")
        references.append(_round_trip(bed, settings, count, pace, f"{kind}-{round_number}"))
        bed.progress.say(f"  round {round_number + 1}, tracker: publish -> {told}")
        port = free_port()
        api_settings = round_settings.with_(bind=f"127.0.0.1:{port}")
        consumer = bed.start(f"{kind}-consume-{round_number}", tracker_command("consume"), api_settings)
        api = bed.start(f"{kind}-api-{round_number}", tracker_command("api"), api_settings)
        consumer.wait_for_log("consuming ")
        api.wait_for_port(port)
        if kind == "wait":
            load.http_load(port, background, token, 1.0, 4, 1, bed.out_dir)  # every worker serving, as in #2
        # The API tells a waiting or streaming client; a webhook comes from the consumer, to the receiver.
        told_by = (
            ["--port", str(port), "--token", token]
            if receiver_port is None
            else ["--receiver-port", str(receiver_port)]
        )
        mode = _CLIENT_MODES[kind]
        client = bed.start(
            f"{mode}-{round_number}",
            bench_command(
                "load",
                mode,
                *pace,
                *told_by,
                *("--first-sample-job", str(samples.start), "--last-sample-job", str(samples.stop - 1)),
                *("--sample-every", str(scale.latency_sample_every)),
            ),
            api_settings,
            capture_stdout=True,
        )
        answers.append(orjson.loads(client.stdout(timeout=scale.latency_s + 120)))
        api.stop()
        consumer.stop()
        bed.progress.say(
            f"  round {round_number + 1}: {told} p99 {_ms(answers[-1]['p99_ms'])}, "
            f"round trip p99 {_ms(references[-1]['p99_ms'])}; split {answers[-1].get('split')}"
        )
    round_trips = [s for reference in references for s in reference["latencies_s"]]
    seen = [s for answer in answers for s in answer["latencies_s"]]
    lost = sum(answer["lost"] + answer["wrong"] for answer in answers)
    details = {
        "rate": round(statistics.fmean(answer["rate"] for answer in answers)),
        "rounds": scale.latency_rounds,
        "samples": len(seen),
        "lost_or_wrong": lost,
        "wrong_examples": [example for answer in answers for example in answer["wrong_examples"]][:3],
        "split": [answer.get("split") for answer in answers],
    }
    return _beside_round_trip(name, figure, percentiles_ms(seen), percentiles_ms(round_trips), 10, lost, details)


def _beside_round_trip(
    name: str,
    figure: str,
    cuts: dict[str, float],
    reference_cuts: dict[str, float],
    slack_ms: float,
    lost: int,
    details: dict[str, Any],
    p99_details: dict[str, Any] | None = None,
) -> list[Result]:
    """The p50 and p99 of a latency beside the publish -> consume round trip's, measured in the
    same run; the p99 must be within ``slack_ms`` of the reference's, with nothing lost."""
    return [
        Result(
            name,
            f"{figure}, p50",
            "ms",
            cuts["p50_ms"],
            reference_cuts["p50_ms"],
            "publish -> consume round trip, p50",
            "—",
            None,
            details,
        ),
        Result(
            name,
            f"{figure}, p99",
            "ms",
            cuts["p99_ms"],
            reference_cuts["p99_ms"],
            "publish -> consume round trip, p99",
            f"<= reference + {slack_ms} ms",
            lost == 0 and cuts["p99_ms"] <= reference_cuts["p99_ms"] + slack_ms,
            {
                **details,
                "over_reference_ms": round(cuts["p99_ms"] - reference_cuts["p99_ms"], 2),
                "max_ms": cuts["max_ms"],
                "reference_max_ms": reference_cuts["max_ms"],
                **(p99_details or {}),
            },
        ),
    ]


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def api(bed: Testbed) -> list[Result]:
    """#3: authenticated GET through `tracker api`, against a constant-JSON endpoint under the same gunicorn."""
    scale, db = bed.scale, bed.database
    settings = bed.settings("api")
    db.empty()
    ids = db.seed_jobs(10_000, terminal_every=2)
    token = db.add_reader(settings)
    db.analyze()
    tool = "wrk" if load.wrk_available() else "python (wrk not installed)"
    bed.progress.say(
        f"api: GET random ids of {len(ids):,} jobs (half finished) with {tool}, "
        f"{settings.workers} gunicorn workers, {scale.api_rounds} round(s) of {scale.api_s:.0f} s each"
    )
    tracker_runs, reference_runs, unmetered_runs, sync_runs = [], [], [], []
    for round_number in range(scale.api_rounds):
        sides = [
            ("constant", bench_command("references", "constant-api"), None, reference_runs, settings),
            ("tracker", tracker_command("api"), token, tracker_runs, settings),
            ("constant-sync", bench_command("references", "constant-sync-api"), None, sync_runs, settings),
        ]
        if bed.metrics_ab:  # --metrics-ab: the tracker with metrics off too, before or after by round
            off = ("tracker-metrics-off", tracker_command("api"), token, unmetered_runs, settings.with_(metrics=False))
            sides.insert(1 + round_number % 2, off)
        for name, command, auth_token, runs, side_settings in sides:
            port = free_port()
            server = bed.start(f"{name}-api-{round_number}", command, side_settings.with_(bind=f"127.0.0.1:{port}"))
            server.wait_for_port(port)
            load.http_load(port, ids, auth_token, 2.0, 16, 2, bed.out_dir)  # warm-up: imports, pools, prepares
            found = load.http_load(port, ids, auth_token, scale.api_s, 16, 2, bed.out_dir)
            server.stop()
            runs.append(found)
            bed.progress.say(
                f"  {name}: {found.requests_per_s:,.0f} requests/s, p50 {found.p50_ms} ms, "
                f"p99 {found.p99_ms} ms, not 200: {found.not_ok}, errors: {found.errors}"
            )
    tracker = statistics.fmean(r.requests_per_s for r in tracker_runs)
    reference = statistics.fmean(r.requests_per_s for r in reference_runs)
    bare = statistics.fmean(r.requests_per_s for r in sync_runs)
    wrong = sum(r.not_ok + r.errors for r in tracker_runs)
    return [
        Result(
            "3 api",
            "authenticated GET /api/5.0/async_status/{id}, requests/s",
            "requests/s",
            tracker,
            reference,
            f"constant-JSON Falcon endpoint, same gunicorn settings, {settings.workers} workers",
            ">= 0.6x",
            tracker >= 0.6 * reference and wrong == 0,
            {
                "tool": tracker_runs[0].tool,
                "connections": 16,
                "rounds": scale.api_rounds,
                "seconds": scale.api_s,
                "p50_ms": tracker_runs[-1].p50_ms,
                "p99_ms": tracker_runs[-1].p99_ms,
                "reference_p50_ms": reference_runs[-1].p50_ms,
                "reference_p99_ms": reference_runs[-1].p99_ms,
                "not_200_or_errors": wrong,
                "workers": settings.workers,
                **_metrics_ab(
                    "tracker_metrics_off_per_round",
                    [r.requests_per_s for r in tracker_runs],
                    [r.requests_per_s for r in unmetered_runs],
                ),
            },
        ),
        Result(
            "3c api",
            "authenticated GET /api/5.0/async_status/{id}, requests/s, against a bare app",
            "requests/s",
            tracker,
            bare,
            f"the constant-JSON endpoint under gunicorn's default sync workers, {settings.workers} workers",
            ">= 0.95x",
            tracker >= 0.95 * bare and wrong == 0,
            {
                "sync_per_round": [round(r.requests_per_s) for r in sync_runs],
                "tracker_per_round": [round(r.requests_per_s) for r in tracker_runs],
                "sync_p50_ms": sync_runs[-1].p50_ms,
                "sync_p99_ms": sync_runs[-1].p99_ms,
            },
        ),
    ]


def memory(bed: Testbed) -> list[Result]:
    """#4: the consumer's resident memory before and after a long stream of events."""
    scale, db = bed.scale, bed.database
    settings = bed.settings("memory")
    db.empty()
    rng = random.Random(4)
    warmup_ids = db.seed_jobs(scale.memory_warmup_events // workload.EVENTS_PER_JOB)
    chunk_jobs = min(20_000, scale.memory_events // workload.EVENTS_PER_JOB)  # published a chunk at a time
    chunks = [db.seed_jobs(chunk_jobs) for _ in range(scale.memory_events // (workload.EVENTS_PER_JOB * chunk_jobs))]
    total = sum(len(c) for c in chunks) * workload.EVENTS_PER_JOB
    db.analyze()
    bed.progress.say(f"memory: {scale.memory_warmup_events:,} events to warm up, then {total:,} events")
    consumer = bed.start("memory-consume", tracker_command("consume"), settings)
    consumer.wait_for_log("consuming ")
    watcher = QueueWatcher(bed.broker, settings.queue)
    samples: list[float] = []
    try:
        warmup = workload.lifecycles(warmup_ids, workload.EVENTS_PER_JOB, rng)
        bed.broker.fill(settings, warmup.bodies, keep_below=200_000)
        _wait_drained(bed, watcher, consumer, warmup.final_jobs[-_DONE_CHECK:], samples)
        time.sleep(1.0)
        before = consumer.rss_bytes()
        started = time.monotonic()
        work = None
        for number, chunk in enumerate(chunks, start=1):
            work = workload.lifecycles(chunk, workload.EVENTS_PER_JOB, rng)
            bed.broker.fill(settings, work.bodies, keep_below=200_000)
            samples.append(consumer.rss_bytes() / _MB)
            bed.progress.say(
                f"  published {number * len(chunk) * workload.EVENTS_PER_JOB:,}/{total:,}; "
                f"consumer RSS {samples[-1]:.1f} MB"
            )
        assert work is not None
        unfinished = _wait_drained(bed, watcher, consumer, work.final_jobs[-_DONE_CHECK:], samples)
        seconds = time.monotonic() - started
        time.sleep(1.0)
        after = consumer.rss_bytes()
    finally:
        watcher.close()
        consumer.stop()
    growth = (after - before) / _MB
    bed.run.charts.append(report.line_chart("Consumer RSS (MB) while folding the events", "sample", "MB", [samples]))
    return [
        Result(
            "4 memory",
            f"consumer RSS growth over {total:,} events",
            "MB",
            growth,
            None,
            None,
            "< 10 MB",
            growth < 10,
            {
                "rss_before_mb": round(before / _MB, 1),
                "rss_after_mb": round(after / _MB, 1),
                "rss_peak_mb": round(max(samples, default=after / _MB), 1),
                "events": total,
                "unfinished_jobs_checked": unfinished,
                "events_per_s": round(total / seconds),
            },
        )
    ]


def _wait_drained(
    bed: Testbed, watcher: QueueWatcher, consumer: processes.MeasuredChild, last_jobs: list[int], samples: list[float]
) -> int:
    """Wait until the consumer has folded everything; how many of ``last_jobs`` it never finished.

    Publishing here is unconfirmed and overlaps the draining, so the broker may drop a few
    messages (seen under heavy load); an empty queue for ten seconds ends the wait all the same.
    """
    emptied = None
    while True:
        consumer.check_alive()
        ready = watcher.ready()
        unfinished = bed.database.pending_among(last_jobs) if ready == 0 else len(last_jobs)
        now = time.monotonic()
        emptied = (emptied or now) if ready == 0 else None
        if unfinished == 0 or (emptied is not None and now - emptied > 10.0):
            return unfinished
        if ready:
            samples.append(consumer.rss_bytes() / _MB)
            bed.progress.tick("memory", f"  {ready:,} events queued; consumer RSS {samples[-1]:.1f} MB")
        time.sleep(1.0 if ready else 0.1)


def table_size(bed: Testbed) -> list[Result]:
    """#5: GET latency from a table of few rows beside one of millions (made with generate_series).

    Two databases, each behind its own `tracker api`, asked in turn one request at a time, so
    whatever else the machine is doing falls on both alike.
    """
    scale = bed.scale
    settings = bed.settings("scale")
    small_db = bed.database
    large_db = BenchDatabase(
        sa.make_url(small_db.url)
        .set(database=f"{sa.make_url(small_db.url).database}_large")
        .render_as_string(hide_password=False)
    )
    try:
        small_db.empty()
        small = small_db.seed_jobs(scale.scale_small_rows, terminal_every=2)
        bed.progress.say(
            f"table size: {len(small):,} rows in one database; creating "
            f"{scale.scale_large_rows:,} in another (generate_series)"
        )
        large_db.recreate()
        large = large_db.seed_jobs(scale.scale_large_rows, terminal_every=2)
        small_db.analyze()
        large_db.analyze()
        tokens, ports = [], []
        for name, database in (("small", small_db), ("large", large_db)):
            port = free_port()
            # No row cache: #5 is about reading the table. With it, the small table would be
            # served from memory (all of it is read ahead) and the large one mostly not.
            own = settings.with_(database_url=database.url, bind=f"127.0.0.1:{port}", row_cache_rows=0)
            tokens.append(database.add_reader(own))
            bed.start(f"scale-api-{name}", tracker_command("api"), own).wait_for_port(port)
            ports.append(port)
        bed.progress.say(f"  {scale.scale_requests:,} GETs of random ids from each, alternating")
        # Each id is asked once (no id is any warmer than another).
        rng = random.Random(5)
        asked = [rng.sample(ids, _SCALE_WARMUP + scale.scale_requests) for ids in (small, large)]
        for port, ids, token in zip(ports, asked, tokens, strict=True):
            for job_id in ids[:_SCALE_WARMUP]:  # warm-up: workers, pools, prepared statements
                load.timed_get(port, job_id, token)
        few_s, many_s = [], []
        for few_id, many_id in zip(asked[0][_SCALE_WARMUP:], asked[1][_SCALE_WARMUP:], strict=True):
            few_s.append(load.timed_get(ports[0], few_id, tokens[0]))
            many_s.append(load.timed_get(ports[1], many_id, tokens[1]))
    finally:
        bed.stop_all()
        large_db.drop()
    few, many = percentiles_ms(few_s), percentiles_ms(many_s)
    bed.progress.say(
        f"  {len(small):,} rows: p50 {few['p50_ms']:.2f} ms, p99 {few['p99_ms']:.2f} ms; "
        f"{len(large):,} rows: p50 {many['p50_ms']:.2f} ms, p99 {many['p99_ms']:.2f} ms"
    )
    return [
        Result(
            "5 scale",
            f"GET latency p50 with {len(large):,} rows vs {len(small):,}",
            "ms",
            many["p50_ms"],
            few["p50_ms"],
            f"the same GETs with {len(small):,} rows",
            "ratio <= 1.2",
            many["p50_ms"] <= 1.2 * few["p50_ms"],
            {
                "p99_ms": many["p99_ms"],
                "reference_p99_ms": few["p99_ms"],
                "requests": scale.scale_requests,
                "rows": len(large),
                "reference_rows": len(small),
            },
        )
    ]


@dataclasses.dataclass
class _Side:
    """One side of a drain A/B: the drain's name, the command that drains, the events it drains,
    and what to read once it is done (nothing by default)."""

    name: str
    command: list[str]
    work: workload.Workload
    after: Callable[[], None] = lambda: None


def _alternating_drains(bed: Testbed, tag: str, side_of: Callable[[str, range], _Side]) -> dict[str, list[float]]:
    """The A/B of #6, #1d and #1e: each round drains side "on" and side "off" (which first
    alternates), each from fresh rows at #6's sizes, ``side_of(side, ids)`` preparing the rows of
    ``ids`` and giving the rest. Each side's rates, round by round."""
    scale, db = bed.scale, bed.database
    settings = bed.settings(tag)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for round_number in range(scale.receipts_rounds):
        for side in ("off", "on") if round_number % 2 == 0 else ("on", "off"):
            db.empty()
            drain = side_of(side, db.seed_jobs(scale.receipts_jobs))
            done_check = drain.work.final_jobs[-_DONE_CHECK:]
            drained = _drain(
                bed,
                settings,
                drain.work.bodies,
                drain.name,
                drain.command,
                done=lambda check=done_check: db.pending_among(check) == 0,
            )
            rates[side].append(drained.rate)
            drain.after()
    return rates


def _per_job(scale: Scale) -> int:
    return scale.receipts_events // scale.receipts_jobs


def _ab_details(scale: Scale, rates: dict[str, list[float]]) -> dict[str, Any]:
    """What every drain A/B reports of its run."""
    return {
        "events": scale.receipts_jobs * _per_job(scale),
        "jobs": scale.receipts_jobs,
        "rounds": scale.receipts_rounds,
        "on_per_round": [round(rate) for rate in rates["on"]],
        "off_per_round": [round(rate) for rate in rates["off"]],
    }


def receipts(bed: Testbed) -> list[Result]:
    """#6: ingest recording receipt times (every batch renews its jobs' heartbeat leases) against not.

    The same consumer (``python -m bench.receipts on|off``) drains the same events into the same
    rows, every job holding a lease; the two sides alternate, and the ratio is of their means.
    """

    def side_of(side: str, ids: range) -> _Side:
        with bed.database.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO async_status_lease (job_id, heartbeat_timeout_s, expires_at) "
                "SELECT id, 3600, now() + interval '1 hour' FROM async_status"
            )
            conn.exec_driver_sql("ANALYZE async_status_lease")
        work = workload.lifecycles(ids, _per_job(bed.scale), random.Random(1))
        return _Side(f"consumer recording receipts {side}", bench_command("receipts", side), work)

    rates = _alternating_drains(bed, "receipts", side_of)
    on, off = statistics.fmean(rates["on"]), statistics.fmean(rates["off"])
    return [
        Result(
            "6 receipts",
            "events/s drained and committed, every job with a heartbeat lease",
            "events/s",
            on,
            off,
            "the same consumer recording no receipt times",
            ">= 0.9x (within 10%)",
            on >= 0.9 * off,
            _ab_details(bed.scale, rates),
        )
    ]


def timeline(bed: Testbed) -> list[Result]:
    """#1d: ingest keeping every event in its job's timeline against keeping only the merge's history.

    Jobs report as workers holding a heartbeat lease do: progress events with no message
    (heartbeats), then a terminal event with one. The timeline keeps all of them; the history the
    store kept before it (``bench.store_variants.HistoryOnly``), only the terminal ones: the
    timeline's whole cost. The same consumer (``python -m bench.receipts off --timeline on|off``,
    no lease renewal on either side) drains the same events into the same rows, at #6's sizes;
    the two sides alternate, and the ratio is of their means.
    """
    kept: dict[str, int] = {}

    def side_of(side: str, ids: range) -> _Side:
        def count_kept() -> None:
            with bed.database.engine.connect() as conn:
                kept[side] = conn.exec_driver_sql("SELECT count(*) FROM async_status_event").scalar_one()

        work = workload.lifecycles(ids, _per_job(bed.scale), random.Random(1), heartbeats=True)
        command = bench_command("receipts", "off", "--timeline", side)
        return _Side(f"consumer keeping the timeline {side}", command, work, count_kept)

    rates = _alternating_drains(bed, "timeline", side_of)
    on, off = statistics.fmean(rates["on"]), statistics.fmean(rates["off"])
    return [
        Result(
            "1d timeline",
            "events/s drained and committed, four heartbeats and a terminal event per job",
            "events/s",
            on,
            off,
            "the same consumer keeping only the merge's history (the terminal events)",
            "none: what the timeline costs",
            None,
            {
                **_ab_details(bed.scale, rates),
                "rows_kept_on": kept["on"],
                "rows_kept_off": kept["off"],
                "timeline_cost": round(1 - on / off, 3),
            },
        )
    ]


def details(bed: Testbed) -> list[Result]:
    """#1e: ingest with SPEC §11's fields (a progress on every progress event, a result on every
    success) against the same events without them.

    ``tracker consume`` drains the two workloads (``workload.lifecycles`` with and without
    ``details``, the same events otherwise) into the same rows, at #6's sizes; the two sides
    alternate, and the ratio is of their means. Also the share of each side's row updates that
    were HOT (no index entry written), from PostgreSQL's statistics.
    """
    hot: dict[str, list[float]] = {"on": [], "off": []}

    def side_of(side: str, ids: range) -> _Side:
        work = workload.lifecycles(ids, _per_job(bed.scale), random.Random(1), details=side == "on")
        before = _row_updates(bed.database)

        def check() -> None:
            if not _complete(bed, ids, len(work.bodies)):
                raise RuntimeError(f"details {side}: the tracker did not fold every event")
            updated, hot_updated = (
                after - first for after, first in zip(_row_updates(bed.database), before, strict=True)
            )
            hot[side].append(hot_updated / updated if updated else 0.0)

        return _Side(f"tracker consume, details {side}", tracker_command("consume"), work, check)

    rates = _alternating_drains(bed, "details", side_of)
    on, off = statistics.fmean(rates["on"]), statistics.fmean(rates["off"])
    return [
        Result(
            "1e details",
            "events/s drained and committed, a progress on each progress event and a result on each success",
            "events/s",
            on,
            off,
            "the same events without progress or result",
            ">= 0.9x (within 10%)",
            on >= 0.9 * off,
            {
                **_ab_details(bed.scale, rates),
                "hot_update_share_on": [round(share, 3) for share in hot["on"]],
                "hot_update_share_off": [round(share, 3) for share in hot["off"]],
                "result_bytes": len(orjson.dumps(workload.result_of(bed.scale.receipts_jobs))),
            },
        )
    ]


def _row_updates(db: BenchDatabase) -> tuple[int, int]:
    """The updates of async_status rows so far, and how many of them were HOT (PostgreSQL's counts,
    which each backend reports within a second of its transactions: hence the wait)."""
    time.sleep(1.5)
    with db.engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        updated, hot_updated = conn.exec_driver_sql(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'async_status'"
        ).one()
    return updated, hot_updated


_LOST_CHECKS = 5  # timed checks, each finding every lost job anew
_RUNNING_JOBS = 10_000  # PENDING, neither deadline nor lease run out


def lost_check(bed: Testbed) -> list[Result]:
    """#7: one lost-job check (find, decide, record) on a table of millions with a thousand jobs lost.

    What `tracker consume` runs every TRACKER_REAP_INTERVAL_S; its publishing of the failed
    events is not in the figure (it follows the number of lost jobs, not of rows). Also timed:
    the same check when nothing is lost, which is what every check costs almost always.
    """
    from tracker.store.leases import LostJobs

    scale = bed.scale
    url = sa.make_url(bed.database.url)
    db = BenchDatabase(url.set(database=f"{url.database}_leases").render_as_string(hide_password=False))
    lost, rows = scale.lost_expired, scale.lost_rows
    try:
        db.recreate()
        bed.progress.say(f"lost-job check: {rows:,} rows (generate_series), {lost:,} of them lost")
        db.seed_jobs(rows - lost - _RUNNING_JOBS, terminal_every=1)
        past_deadline, past_lease = lost // 2, lost - lost // 2
        with db.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO async_status (status, message, initial_message, start_time, deadline_at) "
                "SELECT 'PENDING', 'x', 'x', now() - interval '2 hours', "
                "CASE WHEN g <= %(past_deadline)s THEN now() - interval '1 hour' ELSE now() + interval '1 day' END "
                "FROM generate_series(1, %(count)s) AS g",
                {"past_deadline": past_deadline, "count": lost + _RUNNING_JOBS},
            )
            conn.exec_driver_sql(
                "INSERT INTO async_status_lease (job_id, heartbeat_timeout_s, expires_at) "
                "SELECT id, 60, CASE WHEN row_number() OVER (ORDER BY id) <= %(past_lease)s "
                "THEN now() - interval '1 minute' ELSE now() + interval '1 minute' END "
                "FROM async_status WHERE status = 'PENDING' AND deadline_at > now()",
                {"past_lease": past_lease},
            )
        db.analyze()
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE async_status_lease")
            # Writing out what seeding 5,000,000 rows left in the WAL, now rather than in a
            # checkpoint that lands in the middle of the checks: a cost of the seeding, not of them.
            conn.exec_driver_sql("CHECKPOINT")
        checks = LostJobs(db.engine, 86400)
        checks.check(lambda: True)  # warm-up: the pool's connection, the catalogue
        finding, idle = [], []
        for _ in range(_LOST_CHECKS):
            with db.engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM async_status_lost")
            # This process holds every sample of the run so far, which `tracker consume` (its
            # start-up frozen, gc.freeze) does not: a full collection of it is not the check's.
            gc.collect()
            started = time.perf_counter()
            checked = checks.check(lambda: True)
            finding.append(time.perf_counter() - started)
            if checked is None or len(checked.new) != lost:
                raise RuntimeError(f"the check found {0 if checked is None else len(checked.new)} of {lost} lost jobs")
            gc.collect()
            started = time.perf_counter()
            checks.check(lambda: True)
            idle.append(time.perf_counter() - started)
    finally:
        db.drop()
    found, quiet = percentiles_ms(finding), percentiles_ms(idle)
    slowest = max(finding) * 1000
    bed.progress.say(
        f"  a check finding {lost:,}: p50 {found['p50_ms']:.1f} ms, slowest {slowest:.1f} ms; "
        f"finding none: p50 {quiet['p50_ms']:.2f} ms"
    )
    return [
        Result(
            "7 lost-job check",
            f"slowest of {_LOST_CHECKS} checks, each finding and recording {lost:,} lost jobs among {rows:,} rows",
            "ms",
            slowest,
            None,
            None,
            "< 100 ms",
            slowest < 100,
            {
                "p50_ms": found["p50_ms"],
                "checks_ms": [round(seconds * 1000, 1) for seconds in finding],
                "finding_none_p50_ms": quiet["p50_ms"],
                "rows": rows,
                "lost": lost,
                "running": _RUNNING_JOBS,
            },
        )
    ]


def job_list(bed: Testbed) -> list[Result]:
    """The list's first pages (SPEC §7, §11) on a large, realistic table, beside GET by id on it.

    The table: ``list_rows`` jobs (``bench.list_filters.seed``), the newest ``list_running`` PENDING,
    200 kinds, three labels each, one in fifty FAILED. One `tracker api` without the row cache (as
    #5: GETs of random ids read the table), asked one request at a time, every kind in turn, so
    whatever else the machine does falls on all alike.
    """
    scale = bed.scale
    url = sa.make_url(bed.database.url)
    db = BenchDatabase(url.set(database=f"{url.database}_list").render_as_string(hide_password=False))
    rows, running = scale.list_rows, scale.list_running
    try:
        db.recreate()
        bed.progress.say(f"list: {rows:,} rows, the newest {running:,} PENDING, {list_filters.KINDS} kinds")
        ids = list_filters.seed(db, rows, running)
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("CHECKPOINT")  # the seeding's WAL written now, not during the timing
        port = free_port()
        settings = bed.settings("list").with_(database_url=db.url, bind=f"127.0.0.1:{port}", row_cache_rows=0)
        token = db.add_reader(settings)
        bed.start("list-api", tracker_command("api"), settings).wait_for_port(port)
        headers = {"Authorization": f"Bearer {token}"}
        rng = random.Random(14)

        def timed(path: str, check: Callable[[bytes], bool]) -> float:
            started = time.perf_counter()
            status, body = load.get(port, path, headers)
            took = time.perf_counter() - started
            if status != 200 or not check(body):
                raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
            return took

        kinds: dict[str, Callable[[], float]] = {
            name: functools.partial(timed, list_filters.path_of(name), check)
            for name, (_, check) in list_filters.PAGES.items()
        }
        kinds["GET by id"] = lambda: timed(load.JOB_PATH.format(rng.randint(ids.start, ids.stop - 1)), lambda _: True)
        for _ in range(_SCALE_WARMUP // 3):  # warm-up: workers, pools, prepared statements
            for take in kinds.values():
                take()
        bed.progress.say(f"  {scale.list_requests:,} requests of each kind, in turn")
        took: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(scale.list_requests):
            for name, take in kinds.items():
                took[name].append(take())
    finally:
        bed.stop_all()
        db.drop()
    by_id = percentiles_ms(took["GET by id"])
    results = []
    for name in list_filters.PAGES:
        page = percentiles_ms(took[name])
        bed.progress.say(
            f"  {name}: p50 {page['p50_ms']:.2f} ms, p99 {page['p99_ms']:.2f} ms; "
            f"GET by id p50 {by_id['p50_ms']:.2f} ms, p99 {by_id['p99_ms']:.2f} ms"
        )
        results.append(
            Result(
                "9 list",
                f"first page, newest first (limit 100), of {name} among {rows:,} rows, p99",
                "ms",
                page["p99_ms"],
                by_id["p99_ms"],
                f"GET by id (random ids, no row cache) on the same {rows:,} rows, p99",
                "p99 <= 50 ms",
                page["p99_ms"] <= 50,
                {
                    "p50_ms": page["p50_ms"],
                    "reference_p50_ms": by_id["p50_ms"],
                    "requests": scale.list_requests,
                    "rows": rows,
                    "running": running,
                    "kinds": list_filters.KINDS,
                    "path": list_filters.path_of(name),
                },
            )
        )
    return results


MEASUREMENTS: dict[str, Callable[[Testbed], list[Result]]] = {
    "ingest": ingest,
    "latency": latency,
    "api": api,
    "many_streams": many_streams,
    "wait": waiting,
    "stream": streaming,
    "webhook": webhook,
    "memory": memory,
    "scale": table_size,
    "receipts": receipts,
    "timeline": timeline,
    "details": details,
    "leases": lost_check,
    "capacity": capacity,
    "list": job_list,
}
