"""The shared retry policy (sagas.retry): what it retries, and the two bounds it never passes.

Nothing here sleeps: every policy gets a recording ``sleep`` and, where time matters, a fake clock
that the recorded sleeps (or a slow call) move forward.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from pydantic import SecretStr

from sagas.digitalocean.client import DEFAULT_RETRY, DigitalOceanClient
from sagas.digitalocean.models import PowerOffActionRequest
from sagas.digitalocean.simulator import RunningSimulator
from sagas.errors import AmbiguousWriteError, ProviderUnavailableError
from sagas.retry import RetryPolicy
from tests.conftest import seed_droplet


class Flaky(Exception):
    """A transient failure, for these tests."""


class Broken(Exception):
    """A permanent failure, for these tests."""


@dataclass
class FakeTime:
    """A clock that moves only when someone sleeps (or a call says it took time)."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def failing(times: int, error: Exception, result: str = "done") -> tuple[Callable[[], str], list[int]]:
    """A call that raises ``error`` ``times`` times, then returns ``result``; and its call counter."""
    calls = [0]

    def call() -> str:
        calls[0] += 1
        if calls[0] <= times:
            raise error
        return result

    return call, calls


def test_a_call_that_succeeds_is_called_once_and_never_waits() -> None:
    sleeps: list[float] = []
    call, calls = failing(0, Flaky())
    assert RetryPolicy(on=Flaky, sleep=sleeps.append).run(call) == "done"
    assert calls == [1]
    assert sleeps == []


def test_a_transient_failure_is_retried_until_the_call_succeeds() -> None:
    sleeps: list[float] = []
    call, calls = failing(2, Flaky())
    assert RetryPolicy(on=Flaky, attempts=3, sleep=sleeps.append).run(call) == "done"
    assert calls == [3]
    assert len(sleeps) == 2


def test_attempts_cap_the_calls_and_the_last_error_itself_is_raised() -> None:
    sleeps: list[float] = []
    error = Flaky("still down")
    call, calls = failing(100, error)
    with pytest.raises(Flaky) as caught:
        RetryPolicy(on=Flaky, attempts=4, deadline=None, sleep=sleeps.append).run(call)
    assert caught.value is error
    assert calls == [4]
    assert len(sleeps) == 3


def test_one_attempt_means_no_retry() -> None:
    sleeps: list[float] = []
    call, calls = failing(1, Flaky())
    with pytest.raises(Flaky):
        RetryPolicy(on=Flaky, attempts=1, sleep=sleeps.append).run(call)
    assert calls == [1]
    assert sleeps == []


@pytest.mark.parametrize(
    "on",
    [Flaky, (Flaky, KeyError), lambda exc: isinstance(exc, Flaky)],
    ids=["a class", "a tuple of classes", "a predicate"],
)
def test_an_error_on_does_not_name_is_raised_at_once(on: object) -> None:
    sleeps: list[float] = []
    call, calls = failing(1, Broken("gone for good"))
    with pytest.raises(Broken, match="gone for good"):
        RetryPolicy(on=on, sleep=sleeps.append).run(call)  # type: ignore[arg-type]
    assert calls == [1]
    assert sleeps == []


def test_on_as_a_class_is_an_isinstance_test_not_a_call() -> None:
    # Calling the class would build an exception, which is truthy: everything would be retried.
    policy = RetryPolicy(on=Flaky)
    assert policy.retries(Flaky())
    assert not policy.retries(Broken())
    assert not policy.retries(ValueError())


def test_a_predicate_sees_the_error_itself() -> None:
    seen: list[BaseException] = []

    def only_the_second(exc: BaseException) -> bool:
        seen.append(exc)
        return str(exc) == "second"

    errors = iter([Flaky("first"), Flaky("second")])

    def call() -> str:
        raise next(errors)

    with pytest.raises(Flaky, match="first"):
        RetryPolicy(on=only_the_second, sleep=lambda s: None).run(call)
    assert [str(e) for e in seen] == ["first"]


def test_keyboard_interrupt_is_never_retried() -> None:
    calls = [0]

    def call() -> str:
        calls[0] += 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        RetryPolicy(on=BaseException, sleep=lambda s: None).run(call)
    assert calls == [1]


def test_the_deadline_stops_retries_and_no_wait_ends_past_it() -> None:
    fake = FakeTime()
    call, calls = failing(1000, Flaky())
    policy = RetryPolicy(
        on=Flaky,
        attempts=1000,
        deadline=10.0,
        base_delay=1.0,
        max_delay=2.0,
        sleep=fake.sleep,
        clock=fake.clock,
    )
    with pytest.raises(Flaky):
        policy.run(call)
    assert sum(fake.sleeps) <= 10.0
    # It stopped because the next wait would have crossed the deadline, not earlier: any wait
    # (at least max_delay / 2 = 1 s once capped) fits in what was left only if less than 1 s was left.
    assert 10.0 - sum(fake.sleeps) < 2.0
    assert calls[0] == len(fake.sleeps) + 1 < 1000


def test_time_spent_in_the_calls_counts_against_the_deadline() -> None:
    fake = FakeTime()
    calls = [0]

    def slow_failure() -> str:
        calls[0] += 1
        fake.now += 4.0  # each try takes 4 s before it fails
        raise Flaky

    policy = RetryPolicy(
        on=Flaky,
        attempts=100,
        deadline=10.0,
        base_delay=0.1,
        max_delay=0.1,
        sleep=fake.sleep,
        clock=fake.clock,
    )
    with pytest.raises(Flaky):
        policy.run(slow_failure)
    # Tries end at 4 s and about 8.1 s, both with time left for a wait; the third ends at about
    # 12.2 s, past the deadline, so no fourth (attempts alone would have allowed 100). A try itself
    # is never cut short: the deadline is checked between tries.
    assert calls == [3]
    assert 12.0 <= fake.now - 1000.0 <= 12.3


def test_a_recording_sleep_that_does_not_move_the_clock_still_meets_the_deadline() -> None:
    sleeps: list[float] = []
    call, _ = failing(1000, Flaky())
    policy = RetryPolicy(
        on=Flaky, attempts=1000, deadline=5.0, base_delay=1.0, max_delay=1.0, sleep=sleeps.append
    )
    with pytest.raises(Flaky):
        policy.run(call)
    assert 0 < sum(sleeps) <= 5.0


def test_a_deadline_shorter_than_the_first_wait_means_one_try() -> None:
    fake = FakeTime()
    call, calls = failing(5, Flaky())
    policy = RetryPolicy(
        on=Flaky, deadline=0.1, base_delay=1.0, max_delay=1.0, sleep=fake.sleep, clock=fake.clock
    )
    with pytest.raises(Flaky):
        policy.run(call)
    assert calls == [1]
    assert fake.sleeps == []


def test_no_deadline_leaves_attempts_as_the_only_bound() -> None:
    fake = FakeTime()
    call, calls = failing(1000, Flaky())
    policy = RetryPolicy(
        on=Flaky,
        attempts=30,
        deadline=None,
        base_delay=100.0,
        max_delay=100.0,
        sleep=fake.sleep,
        clock=fake.clock,
    )
    with pytest.raises(Flaky):
        policy.run(call)
    assert calls == [30]
    assert sum(fake.sleeps) > 1000.0


def test_backoff_grows_exponentially_with_equal_jitter_and_is_capped() -> None:
    policy = RetryPolicy(on=Flaky, base_delay=0.5, max_delay=8.0)
    for failures, capped in [
        (1, 0.5),
        (2, 1.0),
        (3, 2.0),
        (4, 4.0),
        (5, 8.0),
        (6, 8.0),
        (60, 8.0),
        (5000, 8.0),
    ]:
        delays = [policy.backoff(failures) for _ in range(200)]
        assert all(capped / 2 <= d <= capped for d in delays), (failures, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered, not the same wait for everyone


def test_zero_delays_retry_without_waiting() -> None:
    sleeps: list[float] = []
    call, calls = failing(2, Flaky())
    assert RetryPolicy(on=Flaky, base_delay=0, max_delay=0, sleep=sleeps.append).run(call) == "done"
    assert calls == [3]
    assert sleeps == [0.0, 0.0]


def test_on_retry_hears_each_retry_with_the_error_the_count_and_the_wait() -> None:
    sleeps: list[float] = []
    heard: list[tuple[str, int, float]] = []
    errors = iter([Flaky("one"), Flaky("two")])

    def call() -> str:
        error = next(errors, None)
        if error is not None:
            raise error
        return "done"

    policy = RetryPolicy(on=Flaky, sleep=sleeps.append)
    assert policy.run(call, on_retry=lambda exc, n, delay: heard.append((str(exc), n, delay))) == "done"
    assert [(e, n) for e, n, _ in heard] == [("one", 1), ("two", 2)]
    assert [d for _, _, d in heard] == sleeps


def test_on_retry_is_not_called_for_the_error_that_ends_the_run() -> None:
    heard: list[int] = []
    call, _ = failing(10, Flaky())
    with pytest.raises(Flaky):
        RetryPolicy(on=Flaky, attempts=3, sleep=lambda s: None).run(
            call, on_retry=lambda exc, n, delay: heard.append(n)
        )
    assert heard == [1, 2]


def test_an_error_raised_by_sleep_ends_the_run_without_the_providers_error_as_context() -> None:
    class Cancelled(Exception):
        pass

    def cancelled_sleep(seconds: float) -> None:
        raise Cancelled("a cancel was requested")

    call, calls = failing(10, Flaky())
    with pytest.raises(Cancelled) as caught:
        RetryPolicy(on=Flaky, sleep=cancelled_sleep).run(call)
    assert calls == [1]
    assert caught.value.__context__ is None


def test_replace_keeps_the_rest_and_validates_the_change() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(on=Flaky, attempts=7, deadline=9.0, sleep=sleeps.append)
    shorter = policy.replace(attempts=2)
    assert (shorter.attempts, shorter.deadline, shorter.on, shorter.sleep) == (2, 9.0, Flaky, sleeps.append)
    assert policy.attempts == 7
    with pytest.raises(ValueError, match="attempts"):
        policy.replace(attempts=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"attempts": 0},
        {"attempts": -1},
        {"attempts": True},
        {"base_delay": -0.1},
        {"max_delay": -1.0},
        {"deadline": -1.0},
    ],
)
def test_a_policy_that_makes_no_sense_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(on=Flaky, **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("on", [ValueError("an instance"), (Flaky, "not a class"), 42, str])
def test_on_must_name_exception_classes_or_be_a_predicate(on: object) -> None:
    with pytest.raises(TypeError, match="on="):
        RetryPolicy(on=on)  # type: ignore[arg-type]


def test_on_is_required_and_keyword_only() -> None:
    with pytest.raises(TypeError):
        RetryPolicy()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        RetryPolicy(Flaky)  # type: ignore[misc]


# --- the client's one retry layer, against the simulator ----------------------------------------
# Requests are counted by the simulator (its fault rule's ``matched`` and its own per-route
# counters), over real loopback HTTP with real (short) waits.


def _client(http: httpx.Client, policy: RetryPolicy) -> DigitalOceanClient:
    return DigitalOceanClient(http, SecretStr("dop_v1_retry-" + uuid.uuid4().hex), retry=policy)


def test_a_delete_facing_5xx_forever_is_sent_exactly_attempts_times_then_is_unavailable(
    simulator: RunningSimulator, sim: httpx.Client
) -> None:
    droplet_id = seed_droplet(sim)
    faults = {"kind": "error_500", "method": "DELETE", "path": r"^/v2/droplets/\d+$", "times": None}
    sim.post("/_sim/faults", json=faults).raise_for_status()
    policy = DEFAULT_RETRY.replace(attempts=3, base_delay=0.02, max_delay=0.05, deadline=5.0)

    with httpx.Client(base_url=simulator.base_url, timeout=5) as http:
        do = _client(http, policy)
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match=r"HTTP 500.*\(3 attempts\)") as caught:
            do.delete_droplet(droplet_id)
        took = time.monotonic() - started

    assert caught.value.status_code == 500
    assert took < 5.0  # the deadline
    (rule,) = sim.get("/_sim/faults").json()["rules"]
    assert (rule["matched"], rule["fired"]) == (3, 3)
    state = sim.get("/_sim/state").json()
    assert state["counters"]["requests"]["DELETE /v2/droplets/{droplet_id}"] == 3
    assert f"delete_droplet:{droplet_id}" not in state["counters"]["writes"]  # never applied
    (droplet,) = [d for d in state["droplets"] if d["id"] == droplet_id]
    assert not droplet["deleted"]


def test_a_delete_facing_5xx_forever_gives_up_at_the_deadline_when_attempts_would_allow_more(
    simulator: RunningSimulator, sim: httpx.Client
) -> None:
    droplet_id = seed_droplet(sim)
    faults = {"kind": "error_500", "method": "DELETE", "path": r"^/v2/droplets/\d+$", "times": None}
    sim.post("/_sim/faults", json=faults).raise_for_status()
    policy = DEFAULT_RETRY.replace(attempts=1000, base_delay=0.05, max_delay=0.1, deadline=0.6)

    with httpx.Client(base_url=simulator.base_url, timeout=5) as http:
        do = _client(http, policy)
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError):
            do.delete_droplet(droplet_id)
        took = time.monotonic() - started

    (rule,) = sim.get("/_sim/faults").json()["rules"]
    # Waits of 0.05-0.1 s fit about 6-12 times into 0.6 s; never anywhere near 1000 tries.
    assert 3 <= rule["matched"] <= 20
    assert (
        sim.get("/_sim/state").json()["counters"]["requests"]["DELETE /v2/droplets/{droplet_id}"]
        == (rule["matched"])
    )
    # No wait ends past the deadline; only the last request's own time may run over it.
    assert 0.3 <= took < 0.6 + 0.5


def test_a_post_facing_5xx_is_sent_once_whatever_the_policy_allows(
    simulator: RunningSimulator, sim: httpx.Client
) -> None:
    droplet_id = seed_droplet(sim)
    faults = {"kind": "error_500", "method": "POST", "path": r"/actions$", "times": None}
    sim.post("/_sim/faults", json=faults).raise_for_status()
    # Even a policy told to retry everything never re-sends a write that may have landed.
    policy = RetryPolicy(on=Exception, attempts=5, base_delay=0.01, max_delay=0.01, deadline=5.0)

    with httpx.Client(base_url=simulator.base_url, timeout=5) as http, pytest.raises(AmbiguousWriteError):
        _client(http, policy).post_droplet_action(droplet_id, PowerOffActionRequest())

    (rule,) = sim.get("/_sim/faults").json()["rules"]
    assert rule["matched"] == 1
