"""Circuit breaker (ICD 9.2 ``circuit_breaker``).

Closed: requests flow and their outcomes are counted in one-second buckets
over a sliding ``window``. Once at least ``min_requests`` outcomes are in the
window and the failed share reaches ``threshold``, the breaker opens: calls
fail at once with :class:`~dnd_cache.errors.CircuitOpenError`. After
``cooldown`` seconds one probe request is let through (half-open): its
success closes the breaker with an empty window, its failure opens it again
for another cool-down.

Only failures that say the server is unreachable or overloaded count
(connection errors, timeouts, CACHE_009, CACHE_011); a miss or an invalid key
is a healthy answer.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Deque, List

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        threshold: float = 0.5,
        window: float = 60.0,
        min_requests: int = 20,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.window = window
        self.min_requests = min_requests
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._opened_at = 0.0
        self._probe_in_flight = False
        # [second, successes, failures], oldest first.
        self._buckets: Deque[List[int]] = deque()

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown:
                return HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """Whether a request may be sent now (takes the probe when half-open)."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                if self._clock() - self._opened_at < self.cooldown:
                    return False
                self._state = HALF_OPEN
                self._probe_in_flight = False
            if self._probe_in_flight:
                return False
            self._probe_in_flight = True
            return True

    def record(self, success: bool) -> None:
        """Counts the outcome of a request that :meth:`allow` let through."""
        with self._lock:
            now = self._clock()
            if self._state == HALF_OPEN:
                self._probe_in_flight = False
                if success:
                    self._state = CLOSED
                    self._buckets.clear()
                else:
                    self._open(now)
                return
            if self._state == OPEN:
                return  # a request sent before the breaker opened
            second = int(now)
            if not self._buckets or self._buckets[-1][0] != second:
                self._buckets.append([second, 0, 0])
            self._buckets[-1][1 if success else 2] += 1
            while self._buckets and self._buckets[0][0] <= now - self.window:
                self._buckets.popleft()
            total = sum(b[1] + b[2] for b in self._buckets)
            failures = sum(b[2] for b in self._buckets)
            if total >= self.min_requests and failures >= self.threshold * total:
                self._open(now)

    def abandon(self) -> None:
        """A request let through ended without an outcome (interrupted, or
        refused before reaching the server's health): frees the probe slot
        without counting anything."""
        with self._lock:
            self._probe_in_flight = False

    def _open(self, now: float) -> None:
        self._state = OPEN
        self._opened_at = now
        self._buckets.clear()
