"""RateBudget: the per-token sliding windows that keep concurrent sagas clear of DigitalOcean's 429s."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import SecretStr

from sagas.digitalocean import ratelimit
from sagas.digitalocean.ratelimit import (
    Priority,
    RateBudget,
    budget_for_token,
    ceilings,
    current_priority,
    request_priority,
)
from tests.support.priority import order_served


class FakeClock:
    """Monotonic and wall time that move only when someone sleeps; sleeping is recorded."""

    def __init__(self, wall_start: float = 1_700_000_000.0) -> None:
        self.now = 1000.0
        self.wall_offset = wall_start - self.now
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def fake_budget(clock: FakeClock, per_minute: int = 250, per_hour: int = 5000) -> RateBudget:
    return RateBudget(per_minute, per_hour, clock=clock.monotonic, wall_clock=clock.wall, sleep=clock.sleep)


def test_requests_within_the_minute_limit_do_not_wait() -> None:
    clock = FakeClock()
    budget = fake_budget(clock, per_minute=5)
    for _ in range(5):
        budget.acquire()
    assert clock.sleeps == []


def test_the_request_over_the_minute_limit_waits_for_the_oldest_to_expire() -> None:
    clock = FakeClock()
    budget = fake_budget(clock, per_minute=3)
    first = budget.acquire()
    clock.now += 10
    budget.acquire()
    budget.acquire()
    assert budget.pending_delay() == pytest.approx(50.0)
    counted_at = budget.acquire()
    assert counted_at == pytest.approx(first + 60.0)
    assert sum(clock.sleeps) == pytest.approx(50.0)


def test_the_hour_window_holds_when_the_minute_window_has_room() -> None:
    clock = FakeClock()
    budget = fake_budget(clock, per_minute=100, per_hour=4)
    first = budget.acquire()
    for _ in range(3):
        clock.now += 120
        budget.acquire()
    counted_at = budget.acquire()
    assert counted_at == pytest.approx(first + 3600.0)


def test_scale_shrinks_the_windows() -> None:
    clock = FakeClock()
    budget = RateBudget(2, 1000, scale=0.01, clock=clock.monotonic, sleep=clock.sleep)
    budget.acquire()
    budget.acquire()
    budget.acquire()
    assert sum(clock.sleeps) == pytest.approx(0.6)


def test_concurrent_threads_never_exceed_the_minute_window() -> None:
    per_minute, scale = 5, 0.005  # a "minute" of 0.3 s of real time
    window = 60.0 * scale
    budget = RateBudget(per_minute, 10_000, scale=scale)
    counted: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(3):
            at = budget.acquire()
            with lock:
                counted.append(at)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    elapsed = time.monotonic() - started

    assert len(counted) == 24
    counted.sort()
    # No window of `window` seconds ever holds more than `per_minute` requests.
    for i in range(len(counted) - per_minute):
        assert counted[i + per_minute] >= counted[i] + window
    # 24 requests at 5 a window need at least 4 full windows after the first burst.
    assert elapsed >= 4 * window * 0.99


def test_observe_remaining_zero_blocks_until_the_reset_time() -> None:
    clock = FakeClock()
    budget = fake_budget(clock)
    budget.observe({"ratelimit-remaining": "0", "ratelimit-reset": str(int(clock.wall()) + 30)})
    budget.acquire()
    assert sum(clock.sleeps) == pytest.approx(30.0)


def test_observe_tightens_to_the_providers_remaining_count() -> None:
    clock = FakeClock()
    budget = fake_budget(clock)
    # Another process with the same token has used most of the hour: only 2 requests remain.
    budget.observe({"RateLimit-Remaining": "2", "RATELIMIT-RESET": str(int(clock.wall()) + 40)})
    budget.acquire()
    budget.acquire()
    assert clock.sleeps == []
    budget.acquire()
    assert sum(clock.sleeps) == pytest.approx(40.0)
    # Once the reset time passed, the local windows alone decide again.
    budget.acquire()
    assert sum(clock.sleeps) == pytest.approx(40.0)


def test_observe_never_loosens_the_local_windows() -> None:
    clock = FakeClock()
    budget = fake_budget(clock, per_minute=2)
    budget.acquire()
    budget.acquire()
    budget.observe({"ratelimit-remaining": "4999", "ratelimit-reset": str(int(clock.wall()) + 1)})
    assert budget.pending_delay() == pytest.approx(60.0)


@pytest.mark.parametrize(
    "headers",
    [{}, {"ratelimit-remaining": "lots"}, {"ratelimit-reset": "1"}, {"content-type": "text/html"}],
)
def test_observe_ignores_missing_or_garbled_headers(headers: dict[str, str]) -> None:
    clock = FakeClock()
    budget = fake_budget(clock)
    budget.observe(headers)
    budget.acquire()
    assert clock.sleeps == []


def test_observe_without_reset_holds_for_a_window() -> None:
    clock = FakeClock()
    budget = fake_budget(clock)
    budget.observe({"ratelimit-remaining": "0"})
    budget.acquire()
    assert sum(clock.sleeps) == pytest.approx(60.0)


def test_budget_for_token_shares_one_budget_per_token_and_never_keeps_the_token() -> None:
    token = SecretStr("dop_v1_" + "ab" * 32)
    same = SecretStr(token.get_secret_value())
    other = SecretStr("dop_v1_" + "cd" * 32)
    assert budget_for_token(token) is budget_for_token(same)
    assert budget_for_token(token) is not budget_for_token(other)
    assert token.get_secret_value() not in repr(ratelimit._registry)
    assert budget_for_token(token).per_minute == 250
    assert budget_for_token(token).per_hour == 5000


@pytest.mark.parametrize("kwargs", [{"per_minute": 0}, {"per_hour": 0}, {"scale": 0.0}])
def test_nonsense_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateBudget(**kwargs)  # type: ignore[arg-type]


def test_a_request_counts_from_its_response_not_from_when_it_was_let_through() -> None:
    """The provider counts a request when it arrives; its response is the latest that can be."""
    clock = FakeClock()
    budget = fake_budget(clock, per_minute=2)
    budget.acquire()
    clock.now += 5  # a slow request: its response comes 5 s later
    budget.observe({})
    budget.acquire()
    budget.observe({})
    assert budget.pending_delay() == pytest.approx(60.0)  # from the response, not 55 s
    budget.acquire()
    assert sum(clock.sleeps) == pytest.approx(60.0)


def test_requests_are_interactive_unless_marked_and_the_mark_ends_with_its_block() -> None:
    assert current_priority() is Priority.INTERACTIVE
    with request_priority(Priority.SCHEDULED):
        assert current_priority() is Priority.SCHEDULED
        with request_priority(Priority.COMPENSATION):
            assert current_priority() is Priority.COMPENSATION
        assert current_priority() is Priority.SCHEDULED
    assert current_priority() is Priority.INTERACTIVE


def test_scheduled_requests_leave_part_of_each_window_to_the_others() -> None:
    assert ceilings(250, 5000, Priority.SCHEDULED) == (240, 4000)
    assert ceilings(250, 5000, Priority.INTERACTIVE) == (250, 4750)
    assert ceilings(250, 5000, Priority.COMPENSATION) == (250, 5000)
    assert ceilings(5, 4, Priority.SCHEDULED) == (5, 4)  # too small to keep anything back
    clock = FakeClock()
    budget = fake_budget(clock, per_minute=50)
    with request_priority(Priority.SCHEDULED):
        for _ in range(48):
            budget.acquire()
        assert budget.pending_delay() == pytest.approx(60.0)
    with request_priority(Priority.COMPENSATION):
        budget.acquire()
        budget.acquire()
    assert clock.sleeps == []


def test_a_burst_429_holds_every_request_back_for_its_retry_after() -> None:
    clock = FakeClock()
    budget = fake_budget(clock)
    budget.observe(
        {"retry-after": "7", "ratelimit-remaining": "0", "ratelimit-reset": str(int(clock.wall()) + 900)}
    )
    budget.acquire()
    assert sum(clock.sleeps) == pytest.approx(7.0)  # the minute frees up; the hourly reset is moot


def test_a_waiting_compensation_goes_before_scheduled_requests_that_waited_longer() -> None:
    budget = RateBudget(2, 10_000, scale=0.01)  # a "minute" of 0.6 s
    budget.acquire()
    budget.acquire()
    order = order_served(budget.acquire, fleet=3)
    assert order[0] == "rollback"
    assert sorted(order[1:]) == ["fleet-0", "fleet-1", "fleet-2"]


def test_a_request_not_answered_yet_keeps_counting_after_its_window() -> None:
    """It may still be on its way (waiting for a connection): the provider counts it on arrival."""
    clock = FakeClock()
    budget = RateBudget(
        1, 100, in_flight=60.0, clock=clock.monotonic, wall_clock=clock.wall, sleep=clock.sleep
    )
    budget.acquire()
    clock.now += 61  # past its window, still unanswered
    assert budget.pending_delay() > 0
    clock.now += 9
    budget.observe({})  # answered 70 s after it was let through: counts from now
    assert budget.pending_delay() == pytest.approx(60.0)
    clock.now += 60
    assert budget.pending_delay() == 0.0
    budget.acquire()
    clock.now += 60 + 61  # never answered: it stops counting after its window and in_flight
    assert budget.pending_delay() == 0.0
