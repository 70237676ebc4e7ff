"""Capped exponential back-off with jitter: the one retry pace of every process (no I/O)."""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass
class Backoff:
    """Capped exponential back-off with jitter: 0.25 s, 0.5 s, 1 s … up to ``cap``."""

    first: float = 0.25
    cap: float = 15.0
    _attempt: int = 0

    def next(self) -> float:
        growth: int = 2**self._attempt  # typeshed types int ** int as Any (a negative power is a float)
        delay = min(self.cap, self.first * growth)
        self._attempt += 1
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self._attempt = 0
