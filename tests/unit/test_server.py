"""The seam between api/server.py and gunicorn, pinned: JsonErrorsWorker overrides methods of the
gthread worker that gunicorn does not document. If a gunicorn release changes one of them, or its
loop stops calling one, these tests fail saying which release and which method.

The worker runs here as in a worker process (``init_process``), on a port the kernel picks, with
a small WSGI app instead of the tracker's and without signal handlers (not the main thread).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import gunicorn
import pytest
from gunicorn import glogging
from gunicorn.workers import gthread

from api import server
from api.waits import WaitRegistry
from tracker.config import Settings

GUNICORN = f"gunicorn {gunicorn.__version__}"
SEAM = "api/server.py's JsonErrorsWorker relies on it (docs/http-surface.md: 'Slow clients and the worker class')"
READ_TIMEOUT_S = 1.0

# The methods JsonErrorsWorker overrides, with the parameters they had when it was written.
OVERRIDDEN = {
    "handle": ["self", "conn"],
    "handle_request": ["self", "req", "conn"],
    "handle_exit": ["self", "sig", "frame"],
    "handle_error": ["self", "req", "client", "addr", "exc"],
}


@pytest.mark.parametrize(("name", "parameters"), OVERRIDDEN.items())
def test_the_gthread_methods_the_worker_overrides_keep_their_signatures(name: str, parameters: list[str]) -> None:
    method = getattr(gthread.ThreadWorker, name, None)
    assert method is not None, f"{GUNICORN}: ThreadWorker.{name} is gone; {SEAM}"
    found = list(inspect.signature(method).parameters)
    assert found == parameters, f"{GUNICORN}: ThreadWorker.{name}({', '.join(found)}); {SEAM}"


def test_the_worker_overrides_those_methods_and_no_other() -> None:
    own = {name for name, value in vars(server.JsonErrorsWorker).items() if inspect.isfunction(value)}
    assert own == set(OVERRIDDEN)
    # handle_exit hands the end of the held waits to the worker's loop through its method queue.
    defer = getattr(gthread.PollableMethodQueue, "defer", None)
    assert defer is not None, f"{GUNICORN}: PollableMethodQueue.defer is gone; {SEAM}"
    found = list(inspect.signature(defer).parameters)
    assert found == ["self", "callback", "args"], f"{GUNICORN}: PollableMethodQueue.defer({', '.join(found)}); {SEAM}"


def small_app(waits: WaitRegistry) -> Any:
    """A WSGI app answering ``hello``; at ``/wait``, only once a wait for job 1 is woken (or in 30 s)."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/wait":
            with waits.watch(1) as waiter:
                waiter.wait(30)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]

    return app


@dataclasses.dataclass
class Running:
    port: int
    worker: server.JsonErrorsWorker
    waits: WaitRegistry

    def ask(self, request: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
        """The whole answer to ``request`` (until the server closes), and how long it took."""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return answer, time.monotonic() - started


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    monkeypatch.setattr(server, "get_app", lambda _settings, waits: small_app(waits))
    monkeypatch.setattr(gc, "freeze", lambda: None)  # the test process's objects stay collectable
    settings = Settings(api_read_timeout_s=READ_TIMEOUT_S, api_threads=4, metrics=False)
    app = server._Gunicorn(settings, access_log=False)  # noqa: SLF001
    listener = socket.create_server(("127.0.0.1", 0))
    worker = server.JsonErrorsWorker(0, os.getppid(), [listener], app, 30, app.cfg, glogging.Logger(app.cfg))
    worker.init_signals = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=worker.init_process, name="gthread-worker", daemon=True)
    thread.start()
    try:
        running = Running(listener.getsockname()[1], worker, app.waits)
        running.ask(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # once answered, its loop runs
        yield running
    finally:
        if worker.alive:
            worker.handle_exit(signal.SIGTERM, None)
        thread.join(10)
        for fd in getattr(worker, "PIPE", ()):
            with contextlib.suppress(OSError):
                os.close(fd)
        worker.tmp.close()
    assert not thread.is_alive(), f"{GUNICORN}: the worker's loop did not end after handle_exit; {SEAM}"


def test_the_worker_answers_a_request_through_its_handle(running: Running) -> None:
    answer, _ = running.ask(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nhello"), f"{GUNICORN}: {answer!r}"


def test_a_client_stuck_mid_headers_is_answered_408_as_json_once_its_deadline_has_passed(running: Running) -> None:
    stuck: dict[str, object] = {}

    def stall() -> None:
        stuck["answer"], stuck["after_s"] = running.ask(b"GET / HTTP/1.1\r\nHost: x\r\n")

    staller = threading.Thread(target=stall, daemon=True)
    staller.start()
    time.sleep(0.1)
    answer, took = running.ask(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.endswith(b"hello") and took < READ_TIMEOUT_S  # not held up by the stuck one
    staller.join(5)
    head, _, body = bytes(stuck["answer"]).partition(b"\r\n\r\n")  # type: ignore[arg-type]
    # Without the socket handle() gives each connection, gunicorn would wait for the rest for ever.
    assert head.startswith(b"HTTP/1.1 408 "), f"{GUNICORN}: handle() did not give the deadline: {head!r}; {SEAM}"
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == {
        "alerts": [{"text": f"the request was not received within {READ_TIMEOUT_S:g} seconds", "level": "error"}]
    }
    assert READ_TIMEOUT_S <= float(stuck["after_s"]) < READ_TIMEOUT_S + 2  # type: ignore[arg-type]


def test_what_gunicorn_refuses_is_answered_through_handle_error_as_json(running: Running) -> None:
    answer, _ = running.ask(b"\x16\x03\x01 not http at all\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), f"{GUNICORN}: {head!r}; handle_error: {SEAM}"
    assert json.loads(body) == {"alerts": [{"text": "malformed HTTP request", "level": "error"}]}
    # As every answer of the app's own (issue 24, point 8).
    assert {b"X-Content-Type-Options: nosniff", b"Cache-Control: no-store"} <= set(head.split(b"\r\n"))


def test_told_to_stop_the_worker_answers_held_waits_at_once(running: Running) -> None:
    held: dict[str, object] = {}

    def wait() -> None:
        held["answer"], held["after_s"] = running.ask(
            b"GET /wait HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=40
        )

    waiting = threading.Thread(target=wait, daemon=True)
    waiting.start()
    deadline = time.monotonic() + 5
    while 1 not in running.waits.waited_ids() and time.monotonic() < deadline:
        time.sleep(0.01)
    told_at = time.monotonic()
    running.worker.handle_exit(signal.SIGTERM, None)
    waiting.join(10)
    assert running.waits.stopping, f"{GUNICORN}: handle_exit's deferred stop of the waits never ran; {SEAM}"
    assert bytes(held["answer"]).endswith(b"hello")  # type: ignore[arg-type]
    assert time.monotonic() - told_at < 2  # not the 30 s the wait would have lasted
