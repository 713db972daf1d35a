"""One call's walk through the ICD 9.2 retries and circuit breaker.

The synchronous and the asyncio client both drive a :class:`RetryState`;
only the way they wait (``time.sleep`` or ``asyncio.sleep``) differs, so the
two cannot drift apart on what is retried, what the breaker counts, and how
long the backoff is.
"""

from __future__ import annotations

import random
from typing import Optional

from . import wire
from .breaker import CircuitBreaker
from .config import ClientConfig
from .errors import CacheError, CircuitOpenError, error_for_status


class RetryState:
    """Retries after connection errors, timeouts, CACHE_009 and CACHE_011, up to
    ``config.retries`` times, with exponential backoff and full jitter; every
    outcome is reported to the breaker."""

    def __init__(self, config: ClientConfig, breaker: CircuitBreaker) -> None:
        self._config = config
        self._breaker = breaker
        self._attempt = 0

    def before_attempt(self) -> None:
        """Raises :class:`CircuitOpenError` when the breaker refuses the attempt."""
        if not self.admit():
            raise CircuitOpenError("circuit breaker open: the server is failing")

    def admit(self, breaker: Optional[CircuitBreaker] = None) -> bool:
        """Whether ``breaker`` (default: the one the state was made with) lets
        the next attempt through; if so, the attempt's outcome is reported to
        it. In a cluster each attempt takes the breaker of the node it goes
        to, which a refreshed map may change between attempts."""
        if breaker is not None:
            self._breaker = breaker
        return self._breaker.allow()

    def after_error(self, exc: CacheError) -> float:
        """The delay before the next attempt; re-raises ``exc`` when it is the last."""
        if not exc.retryable:
            # A refused handshake or a bad key says nothing about health.
            self._breaker.abandon()
            raise exc
        self._breaker.record(False)
        if self._attempt == self._config.retries:
            raise exc
        return self._next_delay()

    def after_answer(self, answer: wire.CacheResponse) -> Optional[float]:
        """``None`` when ``answer`` is final, else the delay before the next attempt."""
        error = error_for_status(answer.status) if answer.status else None
        if error is not None and error.retryable:
            self._breaker.record(False)
            if self._attempt < self._config.retries:
                return self._next_delay()
        else:
            self._breaker.record(True)
        return None

    def interrupted(self) -> None:
        """The attempt ended without an outcome (cancelled, interrupted)."""
        self._breaker.abandon()

    def _next_delay(self) -> float:
        cfg = self._config
        cap = min(cfg.backoff_max, cfg.backoff_base * (2**self._attempt))
        self._attempt += 1
        return random.uniform(0, cap)  # full jitter
