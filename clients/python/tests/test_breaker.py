"""Circuit breaker state machine, on a fake clock."""

from __future__ import annotations

from typing import List

from dnd_cache.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make() -> "tuple[CircuitBreaker, Clock]":
    clock = Clock()
    return CircuitBreaker(threshold=0.5, window=60, min_requests=20, cooldown=5, clock=clock), clock


def feed(breaker: CircuitBreaker, outcomes: List[bool]) -> None:
    for ok in outcomes:
        assert breaker.allow()
        breaker.record(ok)


def test_stays_closed_below_min_requests() -> None:
    breaker, _ = make()
    feed(breaker, [False] * 19)
    assert breaker.state == CLOSED


def test_opens_at_half_failures_once_min_requests_seen() -> None:
    breaker, _ = make()
    feed(breaker, [True] * 10 + [False] * 9)
    assert breaker.state == CLOSED
    feed(breaker, [False])
    assert breaker.state == OPEN
    assert not breaker.allow()


def test_stays_closed_below_threshold() -> None:
    breaker, _ = make()
    feed(breaker, ([True, True, False] * 20))
    assert breaker.state == CLOSED


def test_old_outcomes_leave_the_window() -> None:
    breaker, clock = make()
    feed(breaker, [False] * 15)
    clock.now += 61
    feed(breaker, [True] * 6)
    assert breaker.state == CLOSED  # only 6 outcomes in the window
    feed(breaker, [False] * 14)
    assert breaker.state == OPEN  # 14 of 20


def test_half_open_probe_closes_on_success() -> None:
    breaker, clock = make()
    feed(breaker, [False] * 20)
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state == HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record(True)
    assert breaker.state == CLOSED
    feed(breaker, [False] * 19)  # the window restarted empty
    assert breaker.state == CLOSED


def test_half_open_probe_failure_reopens() -> None:
    breaker, clock = make()
    feed(breaker, [False] * 20)
    clock.now += 5
    assert breaker.allow()
    breaker.record(False)
    assert breaker.state == OPEN
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()


def test_abandoned_probe_frees_the_slot() -> None:
    breaker, clock = make()
    feed(breaker, [False] * 20)
    clock.now += 5
    assert breaker.allow()
    breaker.abandon()
    assert breaker.state == HALF_OPEN
    assert breaker.allow()  # another probe may go
