"""Webhook receivers the tests start: a local HTTP server answering each POST as its script says."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from typing import Any

import standardwebhooks

ACCEPT = "accept"  # 204
REFUSE = "refuse"  # 503
HANG = "hang"  # read the request, then answer nothing until the test ends (or ``release``)
REDIRECT = "redirect"  # 307 to ``redirect_to``


@dataclasses.dataclass(frozen=True)
class Received:
    """One POST as the receiver got it: when (monotonic), its headers (names in lower case), its body."""

    at: float
    headers: dict[str, str]
    body: bytes

    def verified(self, secret: str) -> Any:
        """The body as JSON, once standardwebhooks (not the tracker's code) has checked its signature."""
        return standardwebhooks.Webhook(secret).verify(self.body, self.headers)


class Receiver:
    """A receiver on 127.0.0.1 answering the n-th POST by ``script[n]`` (the last action repeats).

    A context manager: the server runs inside the ``with``; its end releases hung requests.
    """

    def __init__(self, *script: str, redirect_to: str = "http://127.0.0.1:9/") -> None:
        self._script = list(script) or [ACCEPT]
        self._redirect_to = redirect_to
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                action = receiver._record(
                    Received(time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body)
                )
                if action == HANG:
                    receiver._released.wait()
                    return
                if action == REDIRECT:
                    self.send_response(307)
                    self.send_header("Location", receiver._redirect_to)
                elif action == REFUSE:
                    self.send_response(503)
                else:
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str = "/hooks/jobs?team=ops") -> str:
        return self.origin + path

    def _record(self, received: Received) -> str:
        with self._lock:
            action = self._script[min(len(self.received), len(self._script) - 1)]
            self.received.append(received)
        return action

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """The first ``count`` POSTs, once they have arrived; fails the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} POSTs within {timeout} s"
            time.sleep(0.01)
        return self.received[:count]

    def release(self) -> None:
        """Let hung requests end (with no answer)."""
        self._released.set()

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
