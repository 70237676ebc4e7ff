"""Serving the API with gunicorn: threaded workers, each building its own app (and database engine).

Each worker serves up to TRACKER_API_THREADS requests at once, so held waits (``Prefer: wait``)
and slow clients occupy a thread each rather than the whole worker; a request's line, headers and
body must arrive within TRACKER_API_READ_TIMEOUT_S, else it is answered 408 and dropped. Why this
worker class: docs/http-surface.md ("Slow clients and the worker class").

The workers' metrics go to files in a directory ``serve`` makes and removes (prometheus_client's
multiprocess mode), so that ``/metrics`` answers with all of them together.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import falcon
import orjson
from gunicorn import glogging, util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from api.app import get_app
from api.errors import COMMON_HEADERS, MAX_HEADER_FIELD_BYTES, MAX_HEADER_FIELDS, MAX_REQUEST_LINE_BYTES, refusal_for
from api.waits import WaitRegistry
from tracker import auth
from tracker.config import Settings
from tracker.envelope import alerts
from tracker.errors import RequestTimedOut

GRACEFUL_TIMEOUT_S = 10
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is first imported


def serve(settings: Settings, access_log: bool = False) -> None:
    """Run the API on ``settings.bind`` with ``settings.workers`` workers until told to stop.

    The secret is settled before the workers fork, so they all sign with the same one. Raises
    ValueError for an unusable secret; exits the process (gunicorn's way) if it cannot bind.
    """
    secret = auth.load_secret(settings.secret, settings.secret_file)
    with _metrics_directory():
        _Gunicorn(settings.with_(secret=secret), access_log).run()


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """A fresh directory for the workers' metrics files, named in the environment they inherit.

    prometheus_client picks its multiprocess mode when it is imported, so it must not be loaded
    yet (the workers import it as they build their apps). Removed when the master exits; a worker
    leaving through the same frames (gunicorn's workers are forks of it) leaves it alone.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the API's metrics directory was set")
    owner = os.getpid()
    directory = tempfile.mkdtemp(prefix="tracker-api-metrics-")
    os.environ[MULTIPROCESS_DIR] = directory
    try:
        yield
    finally:
        if os.getpid() == owner:
            os.environ.pop(MULTIPROCESS_DIR, None)
            shutil.rmtree(directory, ignore_errors=True)


def _child_exit(_server: Any, worker: Any) -> None:
    """gunicorn's hook, in the master, when a worker has exited: its live gauges go (its counters stay)."""
    from prometheus_client import multiprocess

    if MULTIPROCESS_DIR in os.environ:
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class _Gunicorn(BaseApplication):
    """gunicorn configured from Settings rather than from the command line."""

    def __init__(self, settings: Settings, access_log: bool) -> None:
        self._settings = settings
        self.read_timeout_s = settings.api_read_timeout_s
        # Each worker's own once forked; stopped when it is told to exit.
        self.waits = WaitRegistry(settings.max_waits, settings.max_waits_per_user)
        self._options: dict[str, Any] = {
            "bind": settings.bind,
            "workers": settings.workers,
            "worker_class": JsonErrorsWorker,
            "threads": settings.api_threads,
            # No preload: each worker makes its own engine, so no connection crosses a fork.
            "preload_app": False,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "accesslog": "-" if access_log else None,  # off unless asked for
            "proc_name": "tracker-api",
            # gunicorn's own lines too go through the handler `tracker` set up (tracker.logs): as
            # JSON, or as text with control characters escaped.
            "logger_class": RootLogger,
            "limit_request_line": MAX_REQUEST_LINE_BYTES,
            "limit_request_fields": MAX_HEADER_FIELDS,
            "limit_request_field_size": MAX_HEADER_FIELD_BYTES,
            "child_exit": _child_exit,
        }
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)
        if "control_socket_disable" in self.cfg.settings:  # newer gunicorn only
            # Its one per-user socket path would collide between API processes on one host.
            self.cfg.set("control_socket_disable", True)

    # gunicorn's stubs type a WSGI app's start_response as returning None, wsgiref's (which Falcon
    # uses) as returning write(); gunicorn's own start_response returns write(), as PEP 3333 asks.
    def load(self) -> falcon.App[falcon.Request, falcon.Response]:  # type: ignore[override]
        app = get_app(self._settings, self.waits)
        # Start-up's objects live as long as the worker: out of every later collection's sight (docs/performance.md).
        gc.freeze()
        return app


class RootLogger(glogging.Logger):
    """gunicorn's logger, its records handed to the root logger's handlers instead of its own."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True


class JsonErrorsWorker(ThreadWorker):
    """gunicorn's threaded worker, answering the requests it refuses itself with the alert envelope,
    not HTML, bounding the time a client may take to send a request, and ending held waits at once
    when told to stop.

    The refusals are those the app never sees: a request line or headers over the limits set
    above (named in api.errors), bytes that are not HTTP/1.x at all, or a request line and headers
    not received within the read timeout (a body not received in time is the app's 408).

    It overrides four methods of gunicorn's gthread worker, which gunicorn does not document:
    ``handle``, ``handle_request``, ``handle_exit`` and ``handle_error``. tests/unit/test_server.py
    pins them (their signatures, and that the worker's loop calls them); pyproject.toml allows
    only the gunicorn major release they were checked against (docs/http-surface.md).
    """

    def handle(self, conn: Any) -> Any:
        # On a pool thread, for each connection that is new or has sent bytes again; no other
        # thread touches it meanwhile. Its socket is one with a deadline from its first turn on.
        if not isinstance(conn.sock, DeadlineSocket):
            conn.sock = DeadlineSocket.taking_over(conn.sock)
        # gunicorn parses the request on this thread with blocking reads: without a deadline a
        # client stuck mid-headers would hold the thread for ever.
        conn.sock.start_reading(self._served.read_timeout_s)
        try:
            return super().handle(conn)
        finally:
            conn.sock.stop_reading()

    def handle_request(self, req: Any, conn: Any) -> bool:
        try:
            keep_alive = bool(super().handle_request(req, conn))
        finally:
            # Reading is over (a held wait reads nothing more); gunicorn bounds its own drain.
            conn.sock.stop_reading()
        # A body cut short leaves the stream unusable; a socket handed to the stream pump
        # (api/pump.py) is its own from now on: gunicorn closes only its copy, which says nothing.
        return keep_alive and not conn.sock.timed_out and not conn.sock.handed_off

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # On the main loop, not in the signal handler: held waits are answered at once, so that
        # they end well within the graceful timeout.
        self.method_queue.defer(self._served.waits.stop)

    @property
    def _served(self) -> _Gunicorn:
        app = self.app
        assert isinstance(app, _Gunicorn)
        return app

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        status, text = refusal_for(exc)
        if status >= 500:
            self.log.exception("error handling a request", exc_info=exc)
        else:
            # The exception text may quote what the client sent, so it goes to the log only.
            self.log.warning("refused a request from %s: %s", (addr or ("?",))[0], exc)
        body = orjson.dumps(alerts(text))
        common = "".join(f"{name}: {value}\r\n" for name, value in COMMON_HEADERS.items())
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{common}\r\n"
        )
        try:
            util.write_nonblock(client, head.encode("ascii") + body)
        except OSError:
            self.log.debug("could not send the refusal; the client is gone")


class DeadlineSocket(socket.socket):
    """A client socket whose reads fail with RequestTimedOut once a deadline has passed.

    gunicorn reads requests through ``recv`` with the socket in blocking mode; between
    ``start_reading`` and ``stop_reading`` each read waits at most until the deadline (otherwise
    as the socket's own timeout says).
    """

    read_deadline: float | None = None
    read_timeout_s = 0.0
    timed_out = False
    handed_off = False

    def hand_off(self) -> socket.socket:
        """The connection, for the stream pump (api/pump.py) to write from now on: a socket on a
        duplicate of this one's descriptor. This one sends, reads and shuts down nothing any more
        (gunicorn ends the response and closes it: the pump's copy stays open)."""
        taken = socket.socket(self.family, self.type, self.proto, fileno=os.dup(self.fileno()))
        self.handed_off = True
        return taken

    def sendall(self, data: Any, flags: int = 0) -> None:
        if not self.handed_off:
            super().sendall(data, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        return len(data) if self.handed_off else super().send(data, flags)

    def shutdown(self, how: int) -> None:
        if not self.handed_off:
            super().shutdown(how)

    def start_reading(self, timeout_s: float) -> None:
        """Reads from now on must be done within ``timeout_s``."""
        self.read_timeout_s = timeout_s
        self.read_deadline = time.monotonic() + timeout_s
        self.timed_out = False

    def stop_reading(self) -> None:
        self.read_deadline = None

    @classmethod
    def taking_over(cls, sock: socket.socket) -> DeadlineSocket:
        """The same connection as ``sock``, which must not be used any more."""
        blocking = sock.getblocking()
        taken = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        taken.setblocking(blocking)
        return taken

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.handed_off:
            return b""
        deadline = self.read_deadline
        if deadline is None:
            return super().recv(bufsize, flags)
        remaining = deadline - time.monotonic()
        prior = self.gettimeout()
        if remaining <= 0:
            raise self._timed_out()
        self.settimeout(remaining if prior is None else min(prior, remaining))
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise self._timed_out() from None
            raise
        finally:
            self.settimeout(prior)

    def _timed_out(self) -> RequestTimedOut:
        self.timed_out = True
        return RequestTimedOut(self.read_timeout_s)
