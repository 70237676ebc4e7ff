"""Load from outside the processes under test: HTTP (wrk, or Python when wrk is absent) and paced publishing.

    python -m bench.load publish ...      publish events at a steady rate, each stamped with its send time
    python -m bench.load visibility ...   the same, and time each sampled event until GET shows it
    python -m bench.load waiting ...      the same, each sampled event a job's end, awaited by a GET with Prefer: wait
    python -m bench.load streaming ...    the same, each job's end read from one stream of the list
    python -m bench.load receiving ...    the same, each job's end POSTed to this process's webhook receiver
    python -m bench.load hammer ...       GET random job ids back to back (the load without wrk)

The commands print one JSON object on stdout when done.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import http.server
import os
import pathlib
import queue
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pika

from bench.references import percentiles_ms
from bench.workload import event_body
from tracker import broker, timefmt, webhooks

JOB_PATH = "/api/5.0/async_status/{}"
_ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class HttpLoad:
    """What a load generator saw: throughput, latency, and anything but 200."""

    tool: str
    requests_per_s: float
    requests: int
    not_ok: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def http_load(
    port: int, ids: range, token: str | None, duration_s: float, connections: int, threads: int, work_dir: pathlib.Path
) -> HttpLoad:
    """GET random job ids on 127.0.0.1:``port`` for ``duration_s``, from processes of its own."""
    if wrk_available():
        return _wrk(port, ids, token, duration_s, connections, threads, work_dir)
    return _python_load(port, ids, token, duration_s, processes=threads * 2)


def _wrk(
    port: int, ids: range, token: str | None, duration_s: float, connections: int, threads: int, work_dir: pathlib.Path
) -> HttpLoad:
    work_dir.mkdir(parents=True, exist_ok=True)
    script = work_dir / f"wrk-{port}.lua"
    header = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
    # Each wrk thread seeds its own generator, so the threads ask for different ids.
    script.write_text(
        header
        + "local counter = 0\n"
        + "function setup(thread) counter = counter + 1; thread:set('seed', counter) end\n"
        + "function init(args) math.randomseed(seed * 7919) end\n"
        + f"function request() return wrk.format(nil, string.format('{JOB_PATH.format('%d')}', "
        + f"math.random({ids.start}, {ids.stop - 1}))) end\n"
    )
    done = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout)


def parse_wrk(text: str) -> HttpLoad:
    """wrk's --latency report as an HttpLoad."""

    def number(pattern: str, default: float = 0.0) -> float:
        found = re.search(pattern, text)
        return float(found.group(1)) if found else default

    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    return HttpLoad(
        tool="wrk",
        requests_per_s=number(r"Requests/sec:\s+([\d.]+)"),
        requests=int(number(r"(\d+) requests in")),
        not_ok=int(number(r"Non-2xx or 3xx responses: (\d+)")),
        errors=errors,
        p50_ms=_wrk_ms(re.search(r"\s50%\s+([\d.]+)(us|ms|s)\b", text)),
        p99_ms=_wrk_ms(re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", text)),
    )


def _wrk_ms(found: re.Match[str] | None) -> float | None:
    if found is None:
        return None
    value, unit = float(found.group(1)), found.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _python_load(port: int, ids: range, token: str | None, duration_s: float, processes: int) -> HttpLoad:
    command = [
        sys.executable,
        "-m",
        "bench.load",
        "hammer",
        "--port",
        str(port),
        "--first-job",
        str(ids.start),
        "--last-job",
        str(ids.stop - 1),
        "--duration-s",
        str(duration_s),
    ]
    if token:
        command += ["--token", token]
    children = [
        subprocess.Popen([*command, "--seed", str(seed)], stdout=subprocess.PIPE, cwd=_ROOT)
        for seed in range(processes)
    ]
    parts = [orjson.loads(child.communicate(timeout=duration_s + 60)[0]) for child in children]
    latencies = [s for part in parts for s in part["latencies"]]
    requests = sum(part["requests"] for part in parts)
    cuts = percentiles_ms(latencies)
    return HttpLoad(
        tool=f"python ({processes} processes; wrk not installed)",
        requests_per_s=requests / duration_s,
        requests=requests,
        not_ok=sum(part["not_ok"] for part in parts),
        errors=sum(part["errors"] for part in parts),
        p50_ms=cuts["p50_ms"],
        p99_ms=cuts["p99_ms"],
    )


def hammer(args: argparse.Namespace) -> dict[str, Any]:
    """One Python load process: GET random ids back to back for ``duration_s``."""
    rng = random.Random(args.seed)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    requests = not_ok = errors = 0
    latencies = []
    deadline = time.monotonic() + args.duration_s
    while (started := time.monotonic()) < deadline:
        try:
            status, _ = get(args.port, JOB_PATH.format(rng.randint(args.first_job, args.last_job)), headers)
            not_ok += status != 200
        except OSError:
            errors += 1
            continue
        requests += 1
        if requests % 10 == 0:
            latencies.append(time.monotonic() - started)
    return {"requests": requests, "not_ok": not_ok, "errors": errors, "latencies": latencies}


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """One GET on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def timed_get(port: int, job_id: int, token: str) -> float:
    """Seconds one authenticated GET of ``job_id`` takes, new connection included; raises unless 200."""
    path = JOB_PATH.format(job_id)
    started = time.perf_counter()
    status, body = get(port, path, {"Authorization": f"Bearer {token}"})
    took = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
    return took


class _NotifyClock:
    """Bench-only: a LISTEN of its own on the tracker's channel (PostgreSQL), noting when a
    notification first names each job: publish -> heard splits the path into the consumer's part
    (delivery, group-commit wait, commit, NOTIFY) and the API's (wake-up, read, render, write, client read)."""

    def __init__(self, database_url: str | None) -> None:
        self.heard_at: dict[int, float] = {}
        self._stop = threading.Event()
        if not database_url or not database_url.startswith("postgresql"):
            return
        import psycopg

        self._conn = psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True)
        self._conn.execute("LISTEN tracker_async_status")
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for notify in self._conn.notifies(timeout=0.5):
                at = time.monotonic()
                for part in notify.payload.split(","):
                    if part.isdigit():
                        self.heard_at.setdefault(int(part), at)

    def split(self, sent_at: dict[int, float], told_at: dict[int, float]) -> dict[str, Any]:
        """The two parts' percentiles (ms) over the samples heard and told."""
        self._stop.set()
        both = [job for job in sent_at if job in self.heard_at and job in told_at]
        return {
            "heard_samples": len(both),
            "publish_to_notify": percentiles_ms([self.heard_at[job] - sent_at[job] for job in both]),
            "notify_to_told": percentiles_ms([told_at[job] - self.heard_at[job] for job in both]),
        }


class _PacedPublisher:
    """Publishes at ``rate`` per second, each body stamped with ``bench_sent_at`` (monotonic s)."""

    def __init__(self, amqp_url: str, exchange: str, rate: float) -> None:
        self._connection = broker.connect(amqp_url, "bench-publisher")
        self._channel = self._connection.channel()
        self._exchange = exchange
        self._rate = rate
        self._properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)

    def run(self, count: int, event_for: Any) -> float:
        """Publish ``count`` events, ``event_for(i)`` giving (job_id, message, on_sent) or (job_id,
        message, on_sent, type); the seconds it took."""
        started = time.monotonic()
        for i in range(count):
            wait = started + i / self._rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            job_id, message, on_sent, *typed = event_for(i)
            event_type = typed[0] if typed else "progress"
            sent_at = time.monotonic()
            body = event_body(job_id, event_type, message, timefmt.now(), seq=i, bench_sent_at=sent_at)
            self._channel.basic_publish(self._exchange, broker.routing_key(event_type), body, self._properties)
            if on_sent is not None:
                on_sent(sent_at)
            if i % 1000 == 999:
                self._connection.process_data_events(0)  # answer heartbeats
        took = time.monotonic() - started
        self._connection.close()
        return took


def publish(args: argparse.Namespace) -> dict[str, Any]:
    count = round(args.rate * args.duration_s)
    background = range(args.first_job, args.last_job + 1)
    rng = random.Random(3)
    took = _PacedPublisher(args.amqp_url, args.exchange, args.rate).run(
        count, lambda i: (rng.choice(background), f"step {i}", None)
    )
    return {"published": count, "rate": count / took}


def visibility(args: argparse.Namespace) -> dict[str, Any]:
    """Publish like ``publish``; every ``sample_every``-th event goes to a job of its own, polled by GET."""
    count = round(args.rate * args.duration_s)
    background = range(args.first_job, args.last_job + 1)
    samples = iter(range(args.first_sample_job, args.last_sample_job + 1))
    rng = random.Random(3)
    probes: queue.Queue[tuple[int, str, float] | None] = queue.Queue()
    latencies: list[float] = []
    lost: list[int] = []
    headers = {"Authorization": f"Bearer {args.token}"}

    def probe() -> None:
        while (item := probes.get()) is not None:
            job_id, message, sent_at = item
            deadline = sent_at + args.timeout_s
            # Nothing is visible sooner than a broker round trip plus a commit: polling from the
            # first instant would only add load to the processes being measured.
            time.sleep(max(0.0, sent_at + args.first_poll_s - time.monotonic()))
            while True:
                status, body = get(args.port, JOB_PATH.format(job_id), headers)
                seen = time.monotonic()
                if status == 200 and orjson.loads(body)["response"]["message"] == message:
                    latencies.append(seen - sent_at)
                    break
                if seen > deadline:
                    lost.append(job_id)
                    break
                time.sleep(args.poll_s)

    probers = [threading.Thread(target=probe, daemon=True) for _ in range(args.probers)]
    for thread in probers:
        thread.start()

    def event_for(i: int) -> tuple[int, str, Any]:
        if i % args.sample_every:
            return rng.choice(background), f"step {i}", None
        job_id = next(samples)
        message = f"probe {i}"
        return job_id, message, lambda sent_at: probes.put((job_id, message, sent_at))

    took = _PacedPublisher(args.amqp_url, args.exchange, args.rate).run(count, event_for)
    for _ in probers:
        probes.put(None)
    for thread in probers:
        thread.join(timeout=args.timeout_s + 5)
    return {
        "published": count,
        "rate": count / took,
        "samples": len(latencies),
        "lost": len(lost),
        **percentiles_ms(latencies),
        "latencies_s": latencies,
    }


def _told(
    sent_at: dict[int, float], told_at: dict[int, float], wrong: list[str], count: int, took: float, clock: _NotifyClock
) -> dict[str, Any]:
    """``waiting``'s, ``streaming``'s and ``receiving``'s report: each sampled job's end, from its publish
    to its client told."""
    latencies = [told_at[job_id] - at for job_id, at in sent_at.items() if job_id in told_at]
    return {
        "split": clock.split(sent_at, told_at),
        "published": count,
        "rate": count / took,
        "samples": len(latencies),
        "lost": len(sent_at) - len(latencies),
        "wrong": len(wrong),
        "wrong_examples": wrong[:3],
        **percentiles_ms(latencies),
        "latencies_s": latencies,
    }


def waiting(args: argparse.Namespace) -> dict[str, Any]:
    """Publish like ``publish``; every ``sample_every``-th event ends a job of its own, which a
    GET with ``Prefer: wait`` has been waiting for since ``lead_s`` before: publish -> answered."""
    count = round(args.rate * args.duration_s)
    background = range(args.first_job, args.last_job + 1)
    samples = range(args.first_sample_job, args.last_sample_job + 1)
    sampled = range(0, count, args.sample_every)
    if len(sampled) > len(samples):
        raise SystemExit(f"{len(sampled)} samples need as many jobs, not {len(samples)}")
    rng = random.Random(3)
    lead = max(1, round(args.lead_s * args.rate))  # a waiter starts this many events before its event
    sent_at: dict[int, float] = {}
    answered_at: dict[int, float] = {}
    wrong: list[str] = []
    headers = {"Authorization": f"Bearer {args.token}", "Prefer": f"wait={args.wait_s}"}
    waiters: list[threading.Thread] = []
    clock = _NotifyClock(os.environ.get("TRACKER_DATABASE_URL"))

    def wait_for(job_id: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=args.wait_s + 30)
        try:
            connection.request("GET", JOB_PATH.format(job_id), headers=headers)
            response = connection.getresponse()
            body = response.read()
            answered_at[job_id] = time.monotonic()
            if response.status != 200 or orjson.loads(body)["response"]["status"] != "SUCCEEDED":
                wrong.append(f"{response.status} {body[:200]!r}")
        except OSError as exc:
            wrong.append(repr(exc))
        finally:
            connection.close()

    def start_waiter(index: int) -> None:
        thread = threading.Thread(target=wait_for, args=(samples[index // args.sample_every],), daemon=True)
        thread.start()
        waiters.append(thread)

    for index in sampled:
        if index >= lead:
            break
        start_waiter(index)
    time.sleep(args.lead_s)  # the first waits are held before their events go

    def event_for(i: int) -> tuple[int, str, Any, str]:
        if i + lead < count and (i + lead) % args.sample_every == 0:
            start_waiter(i + lead)
        if i % args.sample_every:
            return rng.choice(background), f"step {i}", None, "progress"
        job_id = samples[i // args.sample_every]
        return job_id, f"done {i}", lambda at: sent_at.__setitem__(job_id, at), "succeeded"

    took = _PacedPublisher(args.amqp_url, args.exchange, args.rate).run(count, event_for)
    for thread in waiters:
        thread.join(timeout=args.wait_s + 30)
    return _told(sent_at, answered_at, wrong, count, took, clock)


def streaming(args: argparse.Namespace) -> dict[str, Any]:
    """Publish like ``publish``; every ``sample_every``-th event ends a job of its own, which one
    stream of the list's SUCCEEDED jobs (SPEC §13), open from the start, shows: publish -> the
    stream's frame read."""
    count = round(args.rate * args.duration_s)
    background = range(args.first_job, args.last_job + 1)
    samples = range(args.first_sample_job, args.last_sample_job + 1)
    if len(range(0, count, args.sample_every)) > len(samples):
        raise SystemExit("more samples than sample jobs")
    rng = random.Random(3)
    sent_at: dict[int, float] = {}
    seen_at: dict[int, float] = {}
    wrong: list[str] = []
    clock = _NotifyClock(os.environ.get("TRACKER_DATABASE_URL"))
    connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=args.duration_s + 60)
    connection.request(
        "GET",
        "/api/5.0/async_status?status=SUCCEEDED",
        headers={"Authorization": f"Bearer {args.token}", "Accept": "text/event-stream"},
    )
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"the stream answered {response.status}")
    response.readline()  # the position's frame: the stream is open
    response.readline()

    def read() -> None:
        try:
            while len(seen_at) < len(range(0, count, args.sample_every)):
                line = response.readline()
                if not line:
                    return
                if line.startswith(b"data: "):
                    row = orjson.loads(line[6:])
                    seen_at.setdefault(int(row["id"]), time.monotonic())
                    if row["status"] != "SUCCEEDED":
                        wrong.append(repr(line[:200]))
        except OSError as exc:
            wrong.append(repr(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def event_for(i: int) -> tuple[int, str, Any, str]:
        if i % args.sample_every:
            return rng.choice(background), f"step {i}", None, "progress"
        job_id = samples[i // args.sample_every]
        return job_id, f"done {i}", lambda at: sent_at.__setitem__(job_id, at), "succeeded"

    took = _PacedPublisher(args.amqp_url, args.exchange, args.rate).run(count, event_for)
    reader.join(timeout=30)
    connection.close()
    return _told(sent_at, seen_at, wrong, count, took, clock)


def finished_job(body: bytes) -> tuple[int, str]:
    """The id and status of the job a webhook's body names (SPEC §13: ``{"type": "job.finished",
    "job": <the row as GET shows it>}``); raises ValueError for any other body."""
    message = orjson.loads(body)
    job = message.get("job") if isinstance(message, dict) and message.get("type") == webhooks.EVENT_TYPE else None
    if not isinstance(job, dict) or type(job.get("id")) is not int or not isinstance(job.get("status"), str):
        raise ValueError(f"not a {webhooks.EVENT_TYPE} message: {body[:200]!r}")
    return job["id"], job["status"]


class _Receiver:
    """An HTTP server on 127.0.0.1:``port``, a thread per request, that answers every POST 204 at
    once and hands ``received`` its body and when it had been read (monotonic s)."""

    def __init__(self, port: int, received: Callable[[bytes, float], None]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                at = time.monotonic()
                self.send_response(204)
                self.end_headers()
                received(body, at)

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: a line on stderr per POST would be work on the cores the measured processes share."""

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def receiving(args: argparse.Namespace) -> dict[str, Any]:
    """Publish like ``publish``; every ``sample_every``-th event ends a job of its own, created with a
    notify_url at this process's receiver on ``receiver_port`` (SPEC §13): publish -> its webhook
    received."""
    count = round(args.rate * args.duration_s)
    background = range(args.first_job, args.last_job + 1)
    samples = range(args.first_sample_job, args.last_sample_job + 1)
    expected = len(range(0, count, args.sample_every))
    if expected > len(samples):
        raise SystemExit("more samples than sample jobs")
    rng = random.Random(3)
    sent_at: dict[int, float] = {}
    received_at: dict[int, float] = {}
    wrong: list[str] = []
    all_received = threading.Event()
    clock = _NotifyClock(os.environ.get("TRACKER_DATABASE_URL"))

    def received(body: bytes, at: float) -> None:
        try:
            job_id, status = finished_job(body)
        except ValueError as exc:
            wrong.append(str(exc))
            return
        received_at.setdefault(job_id, at)
        if status != "SUCCEEDED":
            wrong.append(repr(body[:200]))
        if len(received_at) >= expected:
            all_received.set()

    receiver = _Receiver(args.receiver_port, received)

    def event_for(i: int) -> tuple[int, str, Any, str]:
        if i % args.sample_every:
            return rng.choice(background), f"step {i}", None, "progress"
        job_id = samples[i // args.sample_every]
        return job_id, f"done {i}", lambda at: sent_at.__setitem__(job_id, at), "succeeded"

    try:
        took = _PacedPublisher(args.amqp_url, args.exchange, args.rate).run(count, event_for)
        all_received.wait(args.timeout_s)
    finally:
        receiver.close()
    return _told(sent_at, received_at, wrong, count, took, clock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    hammering = commands.add_parser("hammer")
    hammering.set_defaults(handler=hammer)
    hammering.add_argument("--first-job", type=int, required=True)
    hammering.add_argument("--last-job", type=int, required=True)
    hammering.add_argument("--port", type=int, required=True)
    hammering.add_argument("--token")
    hammering.add_argument("--duration-s", type=float, required=True)
    hammering.add_argument("--seed", type=int, default=0)
    for name, handler in (
        ("publish", publish),
        ("visibility", visibility),
        ("waiting", waiting),
        ("streaming", streaming),
        ("receiving", receiving),
    ):
        command = commands.add_parser(name)
        command.set_defaults(handler=handler)
        command.add_argument("--first-job", type=int, required=True)
        command.add_argument("--last-job", type=int, required=True)
        command.add_argument("--amqp-url", required=True)
        command.add_argument("--exchange", required=True)
        command.add_argument("--rate", type=float, required=True)
        command.add_argument("--duration-s", type=float, required=True)
        if name == "visibility":
            command.add_argument("--port", type=int, required=True)
            command.add_argument("--token", required=True)
            command.add_argument("--first-sample-job", type=int, required=True)
            command.add_argument("--last-sample-job", type=int, required=True)
            command.add_argument("--sample-every", type=int, default=20)
            command.add_argument("--probers", type=int, default=4)
            command.add_argument("--first-poll-s", type=float, default=0.002)
            command.add_argument("--poll-s", type=float, default=0.002)
            command.add_argument("--timeout-s", type=float, default=10.0)
        if name == "waiting":
            command.add_argument("--port", type=int, required=True)
            command.add_argument("--token", required=True)
            command.add_argument("--first-sample-job", type=int, required=True)
            command.add_argument("--last-sample-job", type=int, required=True)
            command.add_argument("--sample-every", type=int, default=50)
            command.add_argument("--lead-s", type=float, default=1.0)
            command.add_argument("--wait-s", type=int, default=30)
        if name == "streaming":
            command.add_argument("--port", type=int, required=True)
            command.add_argument("--token", required=True)
        if name in ("streaming", "receiving"):
            command.add_argument("--first-sample-job", type=int, required=True)
            command.add_argument("--last-sample-job", type=int, required=True)
            command.add_argument("--sample-every", type=int, default=50)
        if name == "receiving":
            command.add_argument("--receiver-port", type=int, required=True)
            command.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    print(orjson.dumps(args.handler(args)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
