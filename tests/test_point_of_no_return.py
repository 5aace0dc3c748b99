"""The point of no return is a pivot's write, not its completion (DESIGN, "Saga life cycle").

Once a pivot may have sent its write, nothing before it is compensated: a cancel takes effect after
it, a failure or a timeout is looked up at the provider (happened -> forward, provably not ->
roll back, cannot tell -> ``failed`` with the evidence). A pivot refused before any write may roll
back. Steps here record calls (tests/test_runner.py's Recorder); the ledger is real.
"""

from __future__ import annotations

import uuid

from sagas.in_doubt import Found, Lookup
from sagas.ledger.store import Ledger
from sagas.models import SagaOptions, SagaStatus, StepStatus
from sagas.runner import Mode, Runner
from sagas.services import Services
from sagas.settings import Settings
from tests.support.recorder import Crash, Recorder, make_catalog, make_runner, step_statuses


def _pivoting(ledger: Ledger, recorder: Recorder, **options: object) -> uuid.UUID:
    catalog = make_catalog(recorder)
    saga, _ = ledger.create_saga(catalog.new_saga("pivoting", {"x": 1}, options=options or None))
    return saga.id


def _run(ledger: Ledger, settings: Settings, recorder: Recorder, saga_id: uuid.UUID) -> object:
    return make_runner(ledger, settings, make_catalog(recorder)).advance(saga_id)


def test_a_pivot_refused_before_any_write_rolls_back_what_came_before(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    recorder.refuse_execute.add("p")
    saga_id = _pivoting(ledger, recorder)
    saga = ledger.get_saga(_run(ledger, settings, recorder, saga_id).id)  # type: ignore[attr-defined]
    assert saga.status is SagaStatus.ROLLED_BACK, saga.error
    assert saga.error is not None and "nothing was sent" in saga.error
    assert "lookup:p" not in recorder.calls  # nothing could have happened: no need to ask
    assert recorder.calls[-1] == "compensate:a"
    assert "compensate:p" not in recorder.calls  # its row proves no write was sent: not undone


def test_a_pivot_that_failed_after_its_write_but_happened_finishes_forward(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    recorder.fail_execute_times["p"] = 1  # a 5xx after the write, say: the step raised
    recorder.lookups["p"] = Lookup(Found.HAPPENED, "GET /v2/droplets/1 is 404: the droplet is gone")
    saga_id = _pivoting(ledger, recorder)
    saga = ledger.get_saga(saga_id)
    _run(ledger, settings, recorder, saga_id)
    saga = ledger.get_saga(saga_id)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    assert recorder.calls == ["execute:a", "execute:p", "lookup:p", "execute:p", "execute:c"]
    pivot = next(s for s in ledger.list_step_results(saga_id) if s.step_name == "p")
    assert pivot.output["in_doubt"]["found"] == "happened"
    assert "404" in pivot.output["in_doubt"]["evidence"]


def test_a_pivot_that_provably_did_not_happen_rolls_back(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    recorder.fail_execute.add("p")
    recorder.lookups["p"] = Lookup(Found.NOT_HAPPENED, "droplet 1 still exists and nothing destroys it")
    saga_id = _pivoting(ledger, recorder)
    _run(ledger, settings, recorder, saga_id)
    saga = ledger.get_saga(saga_id)
    assert saga.status is SagaStatus.ROLLED_BACK, saga.error
    assert saga.error is not None and "nothing destroys it" in saga.error
    assert recorder.calls[-2:] == ["compensate:p", "compensate:a"]  # the failed step too, then a


def test_a_pivot_whose_outcome_cannot_be_told_stops_failed_with_the_evidence_and_resumes_forward(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    recorder.fail_execute_times["p"] = 1
    recorder.lookups["p"] = RuntimeError("the provider is down")
    saga_id = _pivoting(ledger, recorder)
    _run(ledger, settings, recorder, saga_id)
    saga = ledger.get_saga(saga_id)
    assert saga.status is SagaStatus.FAILED
    assert (
        saga.error is not None and "could not be told" in saga.error and "the provider is down" in saga.error
    )
    assert not any(c.startswith("compensate") for c in recorder.calls)  # the snapshot before it stays
    pivot = next(s for s in ledger.list_step_results(saga_id) if s.step_name == "p")
    assert pivot.output["in_doubt"]["found"] == "unknown"
    # A cancel or a rollback hook cannot undo it now; an operator's resume finishes it forward.
    ledger.request_cancel(saga_id)
    rolled = make_runner(ledger, settings, make_catalog(recorder)).advance(saga_id, Mode.ROLLBACK)
    assert rolled.status is SagaStatus.FAILED
    finished = make_runner(ledger, settings, make_catalog(recorder)).advance(saga_id)
    assert finished.status is SagaStatus.COMPLETED, finished.error
    assert recorder.calls[-2:] == ["execute:p", "execute:c"]
    assert not any(c.startswith("compensate") for c in recorder.calls)


def test_a_cancel_during_a_pivot_takes_effect_after_it_and_the_saga_finishes_forward(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    saga_id = _pivoting(ledger, recorder)

    def cancel_then_wait(ctx: object) -> None:
        ledger.request_cancel(saga_id)
        ctx.check_cancel()  # type: ignore[attr-defined]  # a safe point inside the pivot: not a cancel

    recorder.during["p"] = cancel_then_wait
    _run(ledger, settings, recorder, saga_id)
    saga = ledger.get_saga(saga_id)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    assert saga.cancel_requested  # recorded, and reported as arriving past the point of no return
    assert recorder.calls == ["execute:a", "execute:p", "execute:c"]


def test_a_rollback_hook_after_a_pivot_began_writing_finishes_the_saga_forward(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    """The process died mid-pivot after its write (its row says so); the failure hook asks for a
    rollback: the saga is finished forward instead, nothing before the pivot is undone."""
    recorder.crash_execute.add("p")
    saga_id = _pivoting(ledger, recorder)
    try:
        _run(ledger, settings, recorder, saga_id)
    except Crash:
        pass
    assert step_statuses(ledger, saga_id)["p"] == "running"
    saga = make_runner(ledger, settings, make_catalog(recorder)).advance(
        saga_id, Mode.ROLLBACK, reason="flow run crashed"
    )
    assert saga.status is SagaStatus.COMPLETED, saga.error
    assert not any(c.startswith("compensate") for c in recorder.calls)


def test_a_pivot_cut_off_before_its_write_rolls_back_without_asking_the_provider(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    recorder.never_writes.add("p")
    recorder.crash_execute.add("p")
    saga_id = _pivoting(ledger, recorder)
    try:
        _run(ledger, settings, recorder, saga_id)
    except Crash:
        pass
    saga = make_runner(ledger, settings, make_catalog(recorder)).advance(
        saga_id, Mode.ROLLBACK, reason="flow run cancelled"
    )
    assert saga.status is SagaStatus.ROLLED_BACK, saga.error
    assert recorder.calls[-1] == "compensate:a"
    assert "compensate:p" not in recorder.calls


class FakeClock:
    """Time that moves only when something sleeps: deadlines are met without real waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _waits_forever(ctx: object) -> None:
    while True:
        ctx.sleep(30)  # type: ignore[attr-defined]


def test_a_step_past_its_deadline_is_in_doubt_and_compensated_with_the_timeout_recorded(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    clock = FakeClock()
    recorder.during["b"] = _waits_forever
    catalog = make_catalog(recorder)
    saga, _ = ledger.create_saga(
        catalog.new_saga("chain", {"x": 1}, options=SagaOptions(step_timeouts={"b": 90}))
    )
    runner = Runner(ledger, catalog, Services(settings, sleep=clock.sleep, monotonic=clock.monotonic))
    final = runner.advance(saga.id)
    assert final.status is SagaStatus.ROLLED_BACK, final.error
    assert final.error is not None and "90s deadline" in final.error
    b = next(s for s in ledger.list_step_results(saga.id) if s.step_name == "b")
    assert b.status is StepStatus.FAILED and b.compensated_at is not None
    assert "deadline" in b.output["in_doubt"]["why"]
    assert recorder.calls[-2:] == ["compensate:b", "compensate:a"]


def test_a_pivot_past_its_deadline_is_looked_up_and_goes_forward_when_it_happened(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    clock = FakeClock()
    waited: list[int] = []

    def waits_once(ctx: object) -> None:
        if not waited:
            waited.append(1)
            _waits_forever(ctx)

    recorder.during["p"] = waits_once
    recorder.lookups["p"] = Lookup(Found.HAPPENED, "restore action 7 is in-progress")
    catalog = make_catalog(recorder)
    saga, _ = ledger.create_saga(catalog.new_saga("pivoting", {"x": 1}, options={"step_timeouts": {"p": 60}}))
    runner = Runner(ledger, catalog, Services(settings, sleep=clock.sleep, monotonic=clock.monotonic))
    final = runner.advance(saga.id)
    assert final.status is SagaStatus.COMPLETED, final.error
    pivot = next(s for s in ledger.list_step_results(saga.id) if s.step_name == "p")
    assert (
        pivot.output["in_doubt"]["found"] == "happened" and "60s deadline" in pivot.output["in_doubt"]["why"]
    )
    assert not any(c.startswith("compensate") for c in recorder.calls)


def test_step_timeouts_come_from_the_saga_then_the_settings_then_the_step(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    clock = FakeClock()
    recorder.during["a"] = _waits_forever
    catalog = make_catalog(recorder)
    own, _ = ledger.create_saga(catalog.new_saga("chain", {"x": 1}, options={"step_timeouts": {"a": 30}}))
    runner = Runner(ledger, catalog, Services(settings, sleep=clock.sleep, monotonic=clock.monotonic))
    started = clock.now
    assert runner.advance(own.id).status is SagaStatus.ROLLED_BACK
    assert 30 <= clock.now - started < 40
    configured = settings.model_copy(update={"step_timeouts": {"a": 120}})
    other, _ = ledger.create_saga(catalog.new_saga("chain", {"x": 2}))
    runner = Runner(ledger, catalog, Services(configured, sleep=clock.sleep, monotonic=clock.monotonic))
    started = clock.now
    assert runner.advance(other.id).status is SagaStatus.ROLLED_BACK
    assert 120 <= clock.now - started < 130


def test_a_resumed_rollback_never_undoes_a_step_twice(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    """The rollback dies while undoing ``a``, after ``c`` (the failed step, still ``failed``) and
    ``b`` were undone; the resumed rollback undoes ``a`` only."""
    recorder.fail_execute.add("c")
    catalog = make_catalog(recorder)
    saga, _ = ledger.create_saga(catalog.new_saga("chain", {"x": 1}))

    def crash_undoing_a() -> None:
        raise Crash("a")

    original = recorder.fail_compensate
    original["a"] = 0
    crashed = {"done": False}

    def undo_hook(ctx: object) -> None:
        if not crashed["done"]:
            crashed["done"] = True
            crash_undoing_a()

    recorder.compensate_during["a"] = undo_hook
    try:
        make_runner(ledger, settings, catalog).advance(saga.id)
    except Crash:
        pass
    assert recorder.calls == [
        "execute:a",
        "execute:b",
        "execute:c",
        "compensate:c",
        "compensate:b",
        "compensate:a",
    ]
    final = make_runner(ledger, settings, catalog).advance(saga.id)
    assert final.status is SagaStatus.ROLLED_BACK, final.error
    assert recorder.calls[6:] == ["compensate:a"]
