"""What each API process knows of the tokens that logouts ended, in any process (issue 24, point 3).

Every authenticated request looks its token up in a set in memory: no database round trip while
PostgreSQL's notifications keep the set whole, one cheap read when they cannot vouch for it.
How soon each process refuses an ended token: docs/http-surface.md ("Logout").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from api.rowcache import CHECK_S, Trust
from tracker.auth import Claims
from tracker.users import REVOCATION_CHANNEL, Revocation

log = logging.getLogger(__name__)

# As long as the row cache trusts its listener after it last proved itself (api/rowcache.py): the
# latest an ended token can still be accepted by another process whose listener went silent.
TRUST_WINDOW_S = 2 * CHECK_S + 1.0
_PURGE_EVERY_S = 60.0


class Revocations(Protocol):
    """Where revocations are recorded for every process (tracker.users.TokenRevocations)."""

    def revoke(self, token_id: str, expires_at: int) -> None: ...

    def since(self, seq: int) -> list[Revocation]: ...


class RevokedTokens:
    """The ids (``jti``) of the tokens logouts ended, in any API process, until they expire.
    Thread-safe. ``store`` None: this process only (tests without a database).

    The set is kept whole in one of two ways:

    - on PostgreSQL, by the row cache's listener, on a channel of its own (the ChannelHooks of
      api/rowcache.py; a request that finds the set untrusted starts the listener if it has not
      started): once listening it reads every revocation, then adds each one announced. The set
      is trusted while the listener has proved itself within ``window_s``, as the row cache
      trusts it;
    - otherwise (SQLite, no listener, or one not proved lately) each request first reads the
      revocations recorded since the last one it saw; with a ``change_counter`` (SQLite's), only
      when it says another connection has committed since.

    ``clock`` must be the listener's (monotonic); ``wall_clock`` is that of the tokens' ``exp``.
    """

    channel = REVOCATION_CHANNEL

    def __init__(
        self,
        store: Revocations | None,
        change_counter: Callable[[], int] | None = None,
        *,
        window_s: float = TRUST_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._change_counter = change_counter
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        # One read of the database at a time (the counter keeps one connection, and requests that
        # find the set untrusted together share a read rather than each make one): reads are
        # numbered as they begin; the number of the latest one applied.
        self._read_lock = threading.Lock()
        self._reads_begun = 0
        self._read_applied = 0
        self._trust = Trust(window_s)
        self._expiries: dict[str, int] = {}  # token id → its exp
        self._seen_seq = 0  # the newest revocation read from the database
        self._seen_change: int | None = None  # change_counter() when it was read
        self._purge_at = float("-inf")
        self._listen: Callable[[], None] | None = None

    def is_revoked(self, token_id: str) -> bool:
        """Whether a logout ended the token. Raises StoreUnavailable when the database must be
        asked and is away."""
        if self._clock() > self._trust.until:
            self._catch_up()
        return token_id in self._expiries

    def revoke(self, claims: Claims) -> None:
        """End the token of ``claims`` in every API process: recorded (and announced), then known
        in this one at once. Raises StoreUnavailable (then it is not ended)."""
        if self._store is not None:
            self._store.revoke(claims.token_id, claims.expires_at)
        with self._lock:
            self._add(claims.token_id, claims.expires_at)

    def __len__(self) -> int:
        return len(self._expiries)

    @property
    def trusted(self) -> bool:
        """Whether the listener vouches for the set now (requests then ask no database)."""
        return self._clock() <= self._trust.until

    # --- what the listener tells (api.rowcache.ChannelHooks, on its thread) ---

    def went_live(self, proved_at: float) -> None:
        # Listening already: what is recorded from now on is announced; read everything before.
        revocations = self._store.since(0) if self._store is not None else []
        with self._lock:
            self._add_read(revocations)
            self._trust.live(proved_at)

    def proved(self, at: float) -> None:
        with self._lock:
            self._trust.proved(at)

    def went_dark(self) -> None:
        with self._lock:
            self._trust.dark()

    def attached(self, listen: Callable[[], None]) -> None:
        self._listen = listen

    def notified(self, payload: str) -> None:
        token_id, _, expires = payload.rpartition(" ")
        if token_id and expires.isdigit():
            with self._lock:
                self._add(token_id, int(expires))
            return
        # Not one of ours: whatever it means, read what is new rather than miss a revocation.
        log.warning("revocations: unexpected notification %r; reading them again", payload[:100])
        revocations = self._store.since(self._seen_seq) if self._store is not None else []
        with self._lock:
            self._add_read(revocations)

    # --- inside ---

    def _catch_up(self) -> None:
        """Make sure a read of the database begun after this call has been applied: the
        revocations recorded since the newest one seen, unless the change counter says nothing
        was committed since it was last read. Requests that come together share one read."""
        if self._listen is not None:
            self._listen()  # any request starts it, not only GET's reads of a job
        if self._store is None:
            return
        arrived = self._reads_begun
        with self._read_lock:
            if self._read_applied > arrived:
                return  # begun after this request arrived: it saw every commit before
            self._reads_begun += 1
            number = self._reads_begun
            change = None if self._change_counter is None else self._change_counter()
            if change is None or change != self._seen_change:
                revocations = self._store.since(self._seen_seq)  # after the counter: it sees at least that much
                with self._lock:
                    self._add_read(revocations)
                    self._seen_change = change
            self._read_applied = number

    def _add_read(self, revocations: list[Revocation]) -> None:
        """Add revocations read from the database; the caller holds the lock."""
        for revocation in revocations:
            self._add(revocation.token_id, revocation.expires_at)
            self._seen_seq = max(self._seen_seq, revocation.seq)

    def _add(self, token_id: str, expires_at: int) -> None:
        """Add one; now and then drop those expired (their tokens are refused anyway). The
        caller holds the lock."""
        self._expiries[token_id] = expires_at
        now = self._wall_clock()
        if now >= self._purge_at:
            self._purge_at = now + _PURGE_EVERY_S
            for expired in [token for token, expiry in self._expiries.items() if expiry <= now]:
                del self._expiries[expired]
