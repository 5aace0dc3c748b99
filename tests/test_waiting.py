"""How soon the first poll of a wait comes (``tasks.waiting.TypicalWait``): each poll is a request."""

from __future__ import annotations

import random

from tasks.waiting import TypicalWait

LIMITS = {"floor": 0.01, "cap": 100.0}


def test_a_first_poll_that_went_out_on_time_and_found_the_wait_over_shortens_the_next_one() -> None:
    typical = TypicalWait()
    typical.observe("action:snapshot", 2.0, True, held=0.05, **LIMITS)
    assert typical.first_delay("action:snapshot", 2.0) < 2.0


def test_a_first_poll_held_back_by_the_rate_budget_does_not_shorten_the_next_one() -> None:
    """It found the wait over because it went out late: nothing says the estimate was long enough.
    Learning from such polls, a saturated fleet shrank its estimates below the real waits."""
    typical = TypicalWait()
    for _ in range(50):
        typical.observe("action:snapshot", 2.0, True, held=3.0, **LIMITS)
    assert typical.first_delay("action:snapshot", 1.0) == 1.0  # nothing learned: the default


def test_a_first_poll_that_found_the_wait_running_lengthens_the_next_one_late_or_not() -> None:
    typical = TypicalWait()
    typical.observe("snapshot-listing", 1.0, False, held=3.0, **LIMITS)
    assert typical.first_delay("snapshot-listing", 1.0) > 1.0


def test_after_a_miss_the_first_poll_never_comes_before_the_wait_that_missed() -> None:
    typical = TypicalWait()
    typical.observe("action:snapshot", 2.0, False, **LIMITS)
    for _ in range(TypicalWait.MEMORY - 2):
        typical.observe("action:snapshot", typical.first_delay("action:snapshot", 2.0), True, **LIMITS)
    assert typical.first_delay("action:snapshot", 2.0) >= TypicalWait.MARGIN * 2.0


def test_a_miss_is_forgotten_after_memory_polls_so_a_wait_that_got_shorter_is_learnt() -> None:
    typical = TypicalWait()
    typical.observe("action:snapshot", 2.0, False, **LIMITS)
    for _ in range(TypicalWait.MEMORY + 100):
        typical.observe("action:snapshot", typical.first_delay("action:snapshot", 2.0), True, **LIMITS)
    assert typical.first_delay("action:snapshot", 2.0) < 2.0


def waits_missed(typical: TypicalWait, lengths: list[float], default: float) -> int:
    """First polls that found the wait still running, polling each wait in turn when told."""
    missed = 0
    for length in lengths:
        delay = typical.first_delay("action:snapshot", default)
        over = delay >= length
        missed += not over
        typical.observe("action:snapshot", delay, over, **LIMITS)
    return missed


def test_waits_of_one_length_miss_once_per_memory_once_learnt() -> None:
    """Each miss is a request spent for nothing: from 1 s to a 2 s wait takes a few, then one
    when the floor is forgotten, each ``MEMORY`` polls. The quantile alone missed about one first
    poll in twenty, forever (50 of these 1000)."""
    typical = TypicalWait()
    assert waits_missed(typical, [2.0] * 20, default=1.0) <= 5
    assert waits_missed(typical, [2.0] * 1000, default=1.0) <= 1000 // TypicalWait.MEMORY
    assert typical.first_delay("action:snapshot", 1.0) <= TypicalWait.MARGIN * 2.0 * 1.1


def test_waits_that_vary_miss_about_as_often_as_the_quantile_says() -> None:
    rng = random.Random(7)
    typical = TypicalWait()
    lengths = [rng.uniform(1.5, 2.5) for _ in range(4000)]
    missed = waits_missed(typical, lengths, default=1.0)
    assert missed <= 0.05 * len(lengths)
    assert typical.first_delay("action:snapshot", 1.0) <= 2.5 * TypicalWait.MARGIN * 1.2
