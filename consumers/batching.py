"""When the consumer hands a batch to a writer (group commit): a pure decision, no I/O, no clock."""

from __future__ import annotations

import dataclasses

from tracker.config import Settings

# Batches committed at once. While PostgreSQL merges one batch, Python parses the next: the
# writers share one interpreter lock, but a batch spends most of its time in the database, so
# more writers help until prefetch no longer holds their batches (docs/performance.md, "What was
# changed for speed"). Batches over the same jobs wait for each other on the row locks.
WRITERS = 4
# How long an idle loop (nothing pending, or every writer busy) waits before it decides again: a
# delivery or a finished batch ends the wait sooner, but nothing wakes it to see the stop flag.
IDLE_WAIT_S = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class Flush:
    """Hand the ``count`` oldest pending deliveries to a writer now."""

    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    """Receive for up to ``seconds`` (a delivery or a finished batch may end it sooner), then decide again."""

    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class FlushPolicy:
    """Group commit with a bounded wait, and at most ``writers`` batches being written at once.

    With no batch being written, whatever has arrived is written at once: a lone event waits for
    nobody. While batches are being written, deliveries gather until a batch is full
    (``batch_size``) or the oldest has waited ``flush_s``, so under load the batches fill and a
    commit's cost is spread over many events. (Handing small batches to idle writers instead, so
    that several are written at once, was measured slower: each commit then waits on the others;
    docs/performance.md.) With every writer busy nothing is handed over.
    """

    batch_size: int = 500
    flush_s: float = 0.010
    writers: int = WRITERS
    idle_wait_s: float = IDLE_WAIT_S

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.writers < 1:
            raise ValueError(f"batch_size and writers must be at least 1, not {self.batch_size} and {self.writers}")
        if self.flush_s < 0 or self.idle_wait_s <= 0:
            raise ValueError(f"flush_s must be ≥ 0 and idle_wait_s > 0, not {self.flush_s} and {self.idle_wait_s}")

    @classmethod
    def from_settings(cls, settings: Settings) -> FlushPolicy:
        """The policy for ``TRACKER_BATCH_SIZE`` and ``TRACKER_FLUSH_MS``, with ``WRITERS`` writers."""
        return cls(batch_size=settings.batch_size, flush_s=settings.flush_ms / 1000)

    def decide(self, pending: int, writing: int, oldest_waited_s: float) -> Flush | Wait:
        """What to do with ``pending`` deliveries received and not yet handed over, ``writing``
        batches being written, and the oldest pending delivery having waited ``oldest_waited_s``
        (counted from when it arrived, or from the last flush if it arrived while that batch was
        gathered).

        Flush of at most ``batch_size`` and at most ``pending``; a Wait always of more than zero.
        """
        if pending and writing < self.writers:
            wait = self.flush_s - oldest_waited_s
            if not writing or pending >= self.batch_size or wait <= 0:
                return Flush(min(pending, self.batch_size))
            return Wait(wait)
        return Wait(self.idle_wait_s)
