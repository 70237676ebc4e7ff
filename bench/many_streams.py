"""#3b: plain GETs with 1,000 streams open (SPEC §13) against the same GETs without, on one `tracker api`.

The rounds alternate (without, with; then with, without; …) on the same server, so that both sides
see the same machine. Also measured with the streams open: the API workers' resident memory per
stream, and their CPU time per frame written when a change goes to every stream.
"""

from __future__ import annotations

import functools
import pathlib
import resource
import selectors
import socket
import statistics
import time
from typing import Any

from bench import load
from bench.processes import cpu_seconds, free_port, tracker_command
from bench.report import Result
from bench.testbed import Testbed
from tracker.events import new_event
from tracker.store import make_engine, open_job_store

STREAMS = 1000
CHANGES = 20  # each sent to every stream, for the CPU per frame
_MB = 1024 * 1024


def many_streams(bed: Testbed) -> list[Result]:
    scale, db = bed.scale, bed.database
    settings = bed.settings("api")
    db.empty()
    ids = db.seed_jobs(10_000, terminal_every=2)
    token = db.add_reader(settings)
    db.analyze()
    _enough_descriptors(STREAMS + 512)
    rounds = max(4, 2 * scale.api_rounds)  # alternating: the machine drifts between rounds
    bed.progress.say(
        f"many streams: GET random ids with and without {STREAMS:,} streams open, {settings.workers} workers, "
        f"{rounds} alternating round(s) of {scale.api_s:.0f} s each"
    )
    port = free_port()
    server = bed.start("streams-api", tracker_command("api"), settings.with_(bind=f"127.0.0.1:{port}"))
    server.wait_for_port(port)
    load.http_load(port, ids, token, 2.0, 16, 2, bed.out_dir)  # warm-up: imports, pools, prepares
    without: list[load.HttpLoad] = []
    with_streams: list[load.HttpLoad] = []
    cost: dict[str, Any] = {}
    for round_number in range(rounds):
        for opened in (False, True) if round_number % 2 == 0 else (True, False):
            socks: list[socket.socket] = []
            try:
                if opened:
                    rss_before = _workers_rss(server.pid)
                    socks = open_streams(port, token, STREAMS)
                    if not cost:
                        cost = _cost(settings.database_url, server.pid, socks, rss_before)
                found = load.http_load(port, ids, token, scale.api_s, 16, 2, bed.out_dir)
            finally:
                for sock in socks:
                    sock.close()
            (with_streams if opened else without).append(found)
            bed.progress.say(
                f"  {'with' if opened else 'without'} streams: {found.requests_per_s:,.0f} requests/s, "
                f"p50 {found.p50_ms} ms, p99 {found.p99_ms} ms, not 200: {found.not_ok}, errors: {found.errors}"
            )
            time.sleep(1.0)  # the closed streams' sockets go
    server.stop()
    wrong = sum(r.not_ok + r.errors for r in (*without, *with_streams))
    details = {
        "streams": STREAMS,
        "rounds": rounds,
        "seconds": scale.api_s,
        "tool": without[0].tool,
        "requests_per_s_without": round(statistics.fmean(r.requests_per_s for r in without)),
        "requests_per_s_with": round(statistics.fmean(r.requests_per_s for r in with_streams)),
        "not_200_or_errors": wrong,
        "load_average": _load_average(),
        **cost,
    }
    results = []
    for cut in ("p50_ms", "p99_ms"):
        project = statistics.fmean(_value(r, cut) for r in with_streams)
        reference = statistics.fmean(_value(r, cut) for r in without)
        results.append(
            Result(
                "3b many streams",
                f"GET /api/5.0/async_status/{{id}} with {STREAMS:,} streams open, {cut[:3]}",
                "ms",
                project,
                reference,
                f"the same GETs, no stream open, {cut[:3]}",
                "<= 1.1x",
                project <= 1.1 * reference and wrong == 0,
                details,
            )
        )
    return results


def open_streams(port: int, token: str, count: int, timeout_s: float = 60.0) -> list[socket.socket]:
    """``count`` streams of the list, each open (its headers and position received). Raises
    TimeoutError if they are not all open within ``timeout_s``."""
    request = (
        f"GET /api/5.0/async_status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        socks.append(sock)
    drain(socks, lambda got: b"\r\n\r\n" in got and b"id: " in got, timeout_s)
    return socks


def drain(socks: list[socket.socket], done: Any, timeout_s: float) -> None:
    """Read each socket until ``done(bytes read)``; raises TimeoutError past ``timeout_s``."""
    selector = selectors.DefaultSelector()
    got = {sock: b"" for sock in socks}
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while got:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(got)} streams did not answer within {timeout_s} s")
        for key, _mask in selector.select(1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("a stream ended")
            got[sock] += data
            if done(got[sock]):
                selector.unregister(sock)
                del got[sock]
    selector.close()


def _cost(database_url: str, master: int, socks: list[socket.socket], rss_before: int) -> dict[str, Any]:
    """What the open streams cost the workers: memory per stream, CPU per frame sent."""
    rss_after = _workers_rss(master)
    engine = make_engine(database_url)
    store = open_job_store(engine)
    try:
        job = store.create_job("bench change -")
        drain(socks, lambda got: b"bench change -" in got, 30.0)
        cpu_before = _workers_cpu(master)
        for n in range(CHANGES):
            marker = b"bench change %d." % n
            store.apply([new_event(job.id, "progress", marker.decode(), seq=n + 1)])
            drain(socks, functools.partial(_has, marker), 30.0)
        cpu = _workers_cpu(master) - cpu_before
    finally:
        engine.dispose()
    return {
        "rss_per_stream_kib": round((rss_after - rss_before) / len(socks) / 1024, 1),
        "cpu_per_frame_us": round(cpu / (CHANGES * len(socks)) * 1e6, 1),
        "cpu_note": "the workers' user+system CPU over the changes, reads and renders included",
    }


def _has(marker: bytes, got: bytes) -> bool:
    return marker in got


def _workers(master: int) -> list[int]:
    children = pathlib.Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def _workers_rss(master: int) -> int:
    total = 0
    for pid in _workers(master):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _workers_cpu(master: int) -> float:
    return sum(cpu_seconds(pathlib.Path(f"/proc/{pid}/stat")) for pid in _workers(master))


def _enough_descriptors(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard)
        )


def _value(found: load.HttpLoad, cut: str) -> float:
    value = found.p50_ms if cut == "p50_ms" else found.p99_ms
    if value is None:
        raise ValueError("the load generator gave no latency")
    return value


def _load_average() -> str:
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
