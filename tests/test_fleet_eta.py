"""The fleet's ETA: from the account's budget for scheduled work and the requests a snapshot takes."""

from __future__ import annotations

from flows.fleet import Budget, Watch
from sagas.settings import load_settings


def test_the_budget_for_scheduled_work_is_what_the_fleet_may_use_of_the_account_limits() -> None:
    budget = Budget.for_scheduled_work(
        load_settings(do_rate_limit_per_minute=250, do_rate_limit_per_hour=5000)
    )
    assert (budget.per_minute, budget.per_hour, budget.scale) == (240, 4000, 1.0)


def test_ten_thousand_droplets_take_the_minute_pace_for_an_hours_room_then_the_hour_pace() -> None:
    budget = Budget(per_minute=240, per_hour=4000, scale=1.0)
    # 40,000 requests: 4,000 at 240 a minute (1,000 s), then 36,000 at 4,000 an hour (9 h).
    assert budget.seconds_for(40_000, sent_last_hour=0) == 1000 + 9 * 3600
    assert budget.seconds_for(400, sent_last_hour=3_900) == 100 / 240 * 60 + 300 / 4000 * 3600
    assert Budget(240, 4000, scale=0.1).seconds_for(240, 0) == 6.0  # a simulated minute


def test_the_progress_line_counts_each_status_and_gives_the_eta() -> None:
    watch = Watch(Budget(240, 4000, 1.0), total=10_002, skipped=2)
    counts = {"completed": 0, "pending": 9_990, "running": 10}
    watch.note(counts)
    assert watch.describe(counts) == (
        "0 done, 0 rolled back, 0 failed, 10 running, 9990 waiting, of 10002 droplets"
        " (2 skipped: held by another saga); ETA 6h 46m at the account's budget for scheduled work"
        " (240 requests a minute, 4,000 an hour; 3 requests a snapshot)"
    )
    done = {"completed": 10_000}
    watch.note(done)
    assert (
        watch.describe(done)
        == "10000 done, 0 rolled back, 0 failed, 0 running, 0 waiting, of 10002 droplets (2 skipped: held by another saga)"
    )
