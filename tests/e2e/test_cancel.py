"""Cancelling end to end (SPEC §12): worker processes with `publisher.job`, a real `tracker consume`
repeating cancel messages and failing after the grace, on SQLite and PostgreSQL."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest

from bench.processes import environment
from tests.processes import ConsumerProcess, script_workers
from tests.spec_texts import CANCEL_GRACE_MESSAGE
from tracker import broker, cancels, events, merge, timefmt
from tracker.config import Settings
from tracker.model import Job
from tracker.store import JobStore, open_job_store
from tracker.store.cancels import CancelRequests

pytestmark = [pytest.mark.rabbitmq]

REAP_INTERVAL_S = 0.5
GRACE_S = 3

# The worker: listens on its job; once the cancel is heard, does what MODE says.
WORKER = textwrap.dedent(
    """
    import sys, time
    from tracker.publisher import Publisher

    job_id, mode = int(sys.argv[1]), sys.argv[2]
    with Publisher.from_env() as publisher, publisher.job(job_id) as job:
        print("listening", flush=True)
        job.cancelled.wait(60)
        print("heard", job.cancel_notice.message, flush=True)
        if mode == "stop":
            job.check_cancelled()
        elif mode == "ignore":
            time.sleep(60)
        else:
            job.final_message = "finished anyway"
    print("ended", flush=True)
    """
)


class Cluster:
    """A `tracker consume` (restartable), the jobs' store, and the API's way of asking for a cancellation."""

    def __init__(self, settings: Settings, store: JobStore, tmp_path) -> None:
        self._env = environment(
            settings, TRACKER_REAP_INTERVAL_S=str(REAP_INTERVAL_S), TRACKER_CANCEL_GRACE_S=str(GRACE_S)
        )
        self._tmp_path = tmp_path
        self.store = store
        self.requests = CancelRequests(store)
        self.control = broker.ControlPublisher(settings)
        self.consumer: ConsumerProcess | None = None
        self._runs = 0

    def start_consumer(self) -> None:
        self._runs += 1
        self.consumer = ConsumerProcess(self._env, self._tmp_path / f"consumer{self._runs}.log").start()
        self.consumer.wait_ready()

    def stop_consumer(self) -> None:
        assert self.consumer is not None
        code, _ = self.consumer.terminate(timeout=15)
        assert code == 0, f"tracker consume exited with {code}:\n{self.consumer.tail()}"
        self.consumer = None

    def cancel(self, job_id: int, message: str) -> None:
        """As POST .../cancel does: record the request, then tell the worker once."""
        _, notice = self.requests.request(job_id, message, timefmt.now())
        assert self.control.tell([notice])

    def wait_ended(self, job_id: int, timeout_s: float) -> Job:
        deadline = time.monotonic() + timeout_s
        while (row := self.store.get_job(job_id)).status == merge.PENDING and time.monotonic() < deadline:
            time.sleep(0.05)
        return row


@pytest.fixture
def cluster(settings, engine, tmp_path) -> Iterator[Cluster]:
    made = Cluster(settings, open_job_store(engine), tmp_path)
    made.start_consumer()
    try:
        yield made
    finally:
        made.control.close()
        if made.consumer is not None:
            made.stop_consumer()


@pytest.fixture
def start_worker(settings, tmp_path) -> Iterator[Callable[[int, str], subprocess.Popen[str]]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with script_workers(script, settings, "listening") as start:
        yield lambda job_id, mode: start(job_id, mode)


def heard(worker: subprocess.Popen[str]) -> str:
    assert worker.stdout is not None
    return worker.stdout.readline()


def test_a_worker_that_stops_ends_its_job_cancelled(cluster: Cluster, start_worker) -> None:
    job_id = cluster.store.create_job("Deploying.").id
    worker = start_worker(job_id, "stop")
    cluster.cancel(job_id, "wrong target")
    assert heard(worker) == "heard wrong target\n"
    assert worker.wait(timeout=30) == 0
    assert worker.stdout is not None and worker.stdout.read() == "ended\n"  # quietly: no traceback
    row = cluster.wait_ended(job_id, 10)
    assert (row.status, row.message, row.error_code) == (merge.FAILED, "wrong target", "cancelled")
    assert row.cancel_requested_at is not None
    assert [e.type for e in cluster.store.timeline(job_id)] == ["cancel_requested", "failed"]


def test_a_worker_killed_after_the_request_has_its_job_failed_after_the_grace(cluster: Cluster, start_worker) -> None:
    job_id = cluster.store.create_job().id
    worker = start_worker(job_id, "ignore")
    cluster.cancel(job_id, "stop please")
    assert heard(worker) == "heard stop please\n"
    worker.kill()  # SIGKILL: it never answers
    worker.wait()
    asked = time.monotonic()
    row = cluster.wait_ended(job_id, GRACE_S + 10 * REAP_INTERVAL_S + 5)
    took = time.monotonic() - asked
    assert (row.status, row.message, row.error_code) == (
        merge.FAILED,
        CANCEL_GRACE_MESSAGE.format(n=GRACE_S),
        "cancelled",
    )
    assert took > GRACE_S - 1, f"failed {took:.1f} s after the request, before the grace ran out"
    failed = [e for e in cluster.store.timeline(job_id) if e.type == "failed"]
    assert [e.event_id for e in failed] == [cancels.grace_event_id(job_id)]


def test_a_consumer_restarted_between_the_request_and_the_answer_loses_nothing(cluster: Cluster, start_worker) -> None:
    job_id = cluster.store.create_job().id
    worker = start_worker(job_id, "stop")
    cluster.stop_consumer()
    cluster.cancel(job_id, "stop now")  # recorded by the API; no consumer runs
    assert heard(worker) == "heard stop now\n"
    assert worker.wait(timeout=30) == 0  # its failed event waits in the queue
    assert cluster.store.get_job(job_id).status == merge.PENDING
    cluster.start_consumer()
    row = cluster.wait_ended(job_id, 10)
    assert (row.status, row.message, row.error_code) == (merge.FAILED, "stop now", "cancelled")


def test_a_worker_that_starts_after_the_request_hears_the_repeat(cluster: Cluster, start_worker) -> None:
    job_id = cluster.store.create_job().id
    cluster.cancel(job_id, "before you began")  # nobody listens yet: no error, and the message is dropped
    worker = start_worker(job_id, "stop")
    assert heard(worker) == "heard before you began\n"  # within a reap interval or so
    assert worker.wait(timeout=30) == 0
    assert cluster.wait_ended(job_id, 10).error_code == "cancelled"


def test_a_cancel_racing_the_workers_success_is_decided_by_the_merge_rule(cluster: Cluster, start_worker) -> None:
    job_id = cluster.store.create_job().id
    worker = start_worker(job_id, "finish")  # hears it, and succeeds all the same
    cluster.cancel(job_id, "too late?")
    assert heard(worker) == "heard too late?\n"
    assert worker.wait(timeout=30) == 0
    row = cluster.wait_ended(job_id, 10)
    # Its succeeded event is the earliest terminal one: SUCCEEDED, and the row says it was asked.
    assert (row.status, row.message, row.error_code) == (merge.SUCCEEDED, "finished anyway", None)
    assert row.cancel_requested_at is not None
    # The tracker's grace failure arriving later changes nothing; an earlier one would have won.
    late = events.new_event(job_id, "failed", "late", error_code="cancelled")
    cluster.store.apply([late])
    assert cluster.store.get_job(job_id).status == merge.SUCCEEDED


def readme_shell_worker() -> str:
    """The shell worker of README's "Cancelling a job", as it is written there."""
    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("\n## Cancelling a job\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("cancelled", [True, False])
def test_the_readmes_shell_worker_hears_a_cancel(cluster: Cluster, settings, tmp_path, cancelled: bool) -> None:
    assert shutil.which("amqp-consume") and shutil.which("amqp-publish"), (
        "the README's shell worker needs Debian's amqp-tools: apt-get install amqp-tools"
    )
    script = tmp_path / "worker.sh"
    script.write_text(readme_shell_worker())
    script.chmod(0o755)
    job_id = cluster.store.create_job().id
    seconds = 60 if cancelled else 1
    worker = subprocess.Popen(
        [str(script), str(job_id), str(seconds)],
        env=environment(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        if cancelled:
            time.sleep(0.5)  # not needed (the consumer repeats the message), but makes the first one count
            cluster.cancel(job_id, "shell, stop")
        out, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    row = cluster.wait_ended(job_id, 10)
    if cancelled:
        assert (out, row.status, row.message, row.error_code) == (
            "failed\n",
            merge.FAILED,
            "Stopped on request.",
            "cancelled",
        )
    else:
        assert (out, row.status, row.message) == ("succeeded\n", merge.SUCCEEDED, "Done.")
