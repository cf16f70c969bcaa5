from __future__ import annotations

from common.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_closed_until_a_silent_failure_then_refuses_for_the_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(2, clock)
    assert breaker.allow() and breaker.allow()
    breaker.failed()
    assert breaker.is_open
    assert not breaker.allow()
    clock.now += 1.9
    assert not breaker.allow()


def test_after_the_cooldown_one_caller_tries_and_its_success_closes_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(2, clock)
    breaker.failed()
    clock.now += 2
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # everyone else, while the trial is out
    breaker.succeeded()
    assert not breaker.is_open
    assert breaker.allow() and breaker.allow()


def test_a_failed_trial_opens_it_for_another_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(2, clock)
    breaker.failed()
    clock.now += 2
    assert breaker.allow()
    breaker.failed()
    assert not breaker.allow()
    clock.now += 2
    assert breaker.allow()


def test_a_trial_that_tells_nothing_lets_the_next_caller_try() -> None:
    clock = Clock()
    breaker = CircuitBreaker(2, clock)
    breaker.failed()
    clock.now += 2
    assert breaker.allow()
    breaker.released()
    assert breaker.is_open
    assert breaker.allow()
