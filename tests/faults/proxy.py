"""A TCP proxy the test controls: forwards to a server until told to cut, then refuses everyone."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

_CHUNK = 64 * 1024


class TcpProxy:
    """Listens on a local port (``port``; 0: a free one) and forwards each connection to ``upstream``.

    ``cut()`` drops every open connection and makes new ones fail at once, the way a server that
    went away looks to its clients; ``restore()`` forwards again. Use as a context manager.
    """

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.2)
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._cut = False
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self.port: int = self._listener.getsockname()[1]

    def __enter__(self) -> TcpProxy:
        self._acceptor.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Drop every forwarded connection and refuse new ones until ``restore``."""
        with self._lock:
            self._cut = True
            doomed, self._pairs = self._pairs, set()
        for pair in doomed:
            pair.shut()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed.set()
        self.cut()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut:
                client.close()
                continue
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = _Pair(client, server, self._forget)
            with self._lock:
                if self._cut:
                    # cut() ran while we were connecting: this pair must not outlive it.
                    client.close()
                    server.close()
                    continue
                self._pairs.add(pair)
            pair.start()

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)


class _Pair:
    """One client connection and its server connection, copied both ways by two threads.

    Either side closing, or ``shut()``, ends both directions. Sockets are closed only after both
    threads are out of recv/send, because closing a socket under a blocked recv does not wake it
    on Linux and would let a reused descriptor be read by the wrong thread.
    """

    def __init__(self, client: socket.socket, server: socket.socket, on_done: Callable[[_Pair], None]) -> None:
        self._sockets = (client, server)
        self._on_done = on_done
        self._lock = threading.Lock()
        self._running = 2

    def start(self) -> None:
        client, server = self._sockets
        for source, target in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def shut(self) -> None:
        """Make both directions stop: their blocked recv calls return at once."""
        for sock in self._sockets:
            with contextlib.suppress(OSError):  # already shut or closed: nothing left to stop
                sock.shutdown(socket.SHUT_RDWR)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                target.sendall(data)
        except OSError:
            pass
        self.shut()
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            for sock in self._sockets:
                sock.close()
            self._on_done(self)
