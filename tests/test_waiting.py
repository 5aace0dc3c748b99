"""How soon the first poll of a wait comes (``tasks.waiting.TypicalWait``): each poll is a request."""

from __future__ import annotations

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
