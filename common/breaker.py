"""A circuit breaker for a dependency that can stop answering without failing (PostgreSQL frozen).

Each call that finds the dependency silent costs its caller the whole deadline. With many callers
that is every thread waiting the deadline, requests queuing behind them, and answers (even 503s)
arriving later and later. After a silent failure the breaker opens: callers are refused at once
for `cooldown_seconds`, then one caller at a time is let through to try; the first success
closes it again. Pure state; the clock is injected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, cooldown_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._open_until = 0.0  # 0: closed
        self._trying = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._open_until != 0.0

    def allow(self) -> bool:
        """Whether a caller may try now (the one trial, when the breaker has cooled down)."""
        if self._open_until == 0.0:
            return True
        with self._lock:
            if self._open_until == 0.0:
                return True
            if self._trying or self._clock() < self._open_until:
                return False
            self._trying = True
            return True

    def succeeded(self) -> None:
        if self._open_until != 0.0 or self._trying:
            with self._lock:
                self._open_until = 0.0
                self._trying = False

    def failed(self) -> None:
        """A silent failure: refuse everyone for the cooldown, then let one caller try again."""
        with self._lock:
            self._open_until = self._clock() + self._cooldown
            self._trying = False

    def released(self) -> None:
        """The trial ended without telling anything about the dependency (an unrelated error)."""
        if self._trying:
            with self._lock:
                self._trying = False
