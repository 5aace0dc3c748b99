"""The runner's rules (DESIGN 1, 2, 4, 5, 7, 8) on the real ledger, with steps that record calls."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import text

from sagas.errors import (
    DefinitionMismatchError,
    LeaseLostError,
    SagaBusyError,
    UnknownStepError,
)
from sagas.ledger.store import Ledger
from sagas.models import SagaStatus, StepStatus
from sagas.runner import Mode
from sagas.settings import Settings
from sagas.steps import Catalog, KindDefinition, StepContext, StepDefinition
from tests.support.recorder import (
    AnyInputs,
    Crash,
    Recorder,
    make_catalog,
    make_runner,
    new_saga,
    step_statuses,
)


def test_completes_and_records_outputs(ledger: Ledger, settings: Settings, recorder: Recorder) -> None:
    catalog = make_catalog(recorder)
    saga_id = new_saga(ledger, catalog)
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED
    assert recorder.calls == ["execute:a", "execute:b", "execute:c"]
    assert saga.context["b"] == {"made": f"b-arcadia-b-{saga_id.hex}"}
    assert step_statuses(ledger, saga_id) == {"a": "completed", "b": "completed", "c": "completed"}
    assert saga.lease_owner is None


def test_one_ledger_write_per_step_boundary(ledger: Ledger, settings: Settings, recorder: Recorder) -> None:
    """A step's completion and the next step's start are one statement: one commit, one now()."""
    catalog = make_catalog(recorder)
    saga_id = new_saga(ledger, catalog)
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    a, b, c = ledger.list_step_results(saga_id)
    assert (b.started_at, c.started_at) == (a.completed_at, b.completed_at)
    assert (saga.status, saga.finished_at) == (SagaStatus.COMPLETED, c.completed_at)  # the last one too
    assert [s.attempts for s in (a, b, c)] == [1, 1, 1]
    assert (b.idempotency_key, c.idempotency_key) == (f"arcadia-b-{saga_id.hex}", f"arcadia-c-{saga_id.hex}")


def test_a_next_step_whose_key_another_saga_holds_rolls_back_what_ran(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    """The write that completes ``a`` would also start ``shared``, whose key another saga holds:
    ``a`` is still recorded completed (then undone), ``shared`` never starts, the holder is untouched."""
    shared = StepDefinition(
        name="shared",
        execute=lambda ctx: recorder.calls.append("execute:shared") or {},
        compensate=lambda ctx: recorder.calls.append("compensate:shared"),
        idempotency_key=lambda scope: "arcadia-one-name-for-everyone",
    )
    catalog = Catalog(
        steps=[recorder.step("a"), shared],
        kinds=[KindDefinition(name="clash", version="1", inputs_model=AnyInputs, steps=("a", "shared"))],
    )
    holder, _ = ledger.create_saga(catalog.new_saga("clash", {"n": 1}))
    assert make_runner(ledger, settings, catalog).advance(holder.id).status is SagaStatus.COMPLETED
    recorder.calls.clear()
    second, _ = ledger.create_saga(catalog.new_saga("clash", {"n": 2}))
    saga = make_runner(ledger, settings, catalog).advance(second.id)
    assert saga.status is SagaStatus.ROLLED_BACK
    assert saga.error is not None and "arcadia-one-name-for-everyone" in saga.error
    assert recorder.calls == ["execute:a", "compensate:a"]
    assert step_statuses(ledger, second.id) == {"a": "compensated"}
    assert step_statuses(ledger, holder.id) == {"a": "completed", "shared": "completed"}


def test_failure_compensates_in_reverse_including_the_failed_step(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    recorder.fail_execute.add("c")
    catalog = make_catalog(recorder)
    saga_id = new_saga(ledger, catalog)
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    assert saga.status is SagaStatus.ROLLED_BACK
    assert recorder.calls == [
        "execute:a",
        "execute:b",
        "execute:c",
        "compensate:c",
        "compensate:b",
        "compensate:a",
    ]
    # c's undo ran (compensated_at is set) and it still reads "failed", as in the seed's ledger.
    assert step_statuses(ledger, saga_id) == {"a": "compensated", "b": "compensated", "c": "failed"}
    assert {s.step_name: s.compensated_at is not None for s in ledger.list_step_results(saga_id)} == {
        "a": True,
        "b": True,
        "c": True,
    }
    assert saga.error is not None and "c broke" in saga.error


def test_forward_mode_stops_at_compensating_for_the_hook(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    recorder.fail_execute.add("b")
    catalog = make_catalog(recorder)
    saga_id = new_saga(ledger, catalog)
    runner = make_runner(ledger, settings, catalog)
    assert runner.advance(saga_id, Mode.FORWARD).status is SagaStatus.COMPENSATING
    assert runner.advance(saga_id, Mode.ROLLBACK).status is SagaStatus.ROLLED_BACK
    assert recorder.calls[-2:] == ["compensate:b", "compensate:a"]


def test_resume_after_a_crash_never_redoes_completed_steps(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    recorder.crash_execute.add("b")
    catalog = make_catalog(recorder)
    saga_id = new_saga(ledger, catalog)
    with pytest.raises(Crash):
        make_runner(ledger, settings, catalog).advance(saga_id)
    assert step_statuses(ledger, saga_id) == {"a": "completed", "b": "running"}
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED
    assert recorder.calls == ["execute:a", "execute:b", "execute:b", "execute:c"]
    attempts = {s.step_name: s.attempts for s in ledger.list_step_results(saga_id)}
    assert attempts == {"a": 1, "b": 2, "c": 1}


def test_second_runner_is_busy_and_writes_nothing(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    catalog = make_catalog(recorder)
    saga_id = new_saga(ledger, catalog)
    holder = ledger.claim(saga_id, 30)
    before = (ledger.get_saga(saga_id), ledger.list_step_results(saga_id))
    with pytest.raises(SagaBusyError, match="busy"):
        make_runner(ledger, settings, catalog).advance(saga_id)
    assert (ledger.get_saga(saga_id), ledger.list_step_results(saga_id)) == before
    assert recorder.calls == []
    ledger.release(holder)


def test_concurrent_runners_one_runs_the_other_is_busy(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    catalog = make_catalog(recorder)
    saga_id = new_saga(ledger, catalog)
    gate = threading.Barrier(4)
    outcomes: list[str] = []

    def go() -> None:
        gate.wait()
        try:
            outcomes.append(make_runner(ledger, settings, catalog).advance(saga_id).status.value)
        except SagaBusyError:
            outcomes.append("busy")

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every step ran exactly once, whoever got there.
    assert sorted(recorder.calls) == ["execute:a", "execute:b", "execute:c"]
    assert "completed" in outcomes and set(outcomes) <= {"completed", "busy"}
    assert step_statuses(ledger, saga_id) == {"a": "completed", "b": "completed", "c": "completed"}


def test_a_runner_that_lost_its_lease_stops_writing(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    catalog = make_catalog(recorder)
    saga_id = new_saga(ledger, catalog)
    engine = ledger._engine

    def steal(ctx: StepContext) -> None:
        # Another runner takes over while this one is inside step b (its lease "expired").
        with engine.begin() as conn:
            conn.execute(text("UPDATE saga_runs SET lease_expires_at = now() - interval '1 second'"))
        ledger.claim(saga_id, 30)

    recorder.during["b"] = steal
    with pytest.raises(LeaseLostError):
        make_runner(ledger, settings, catalog).advance(saga_id)
    # b's completion was never written, and nothing after it ran.
    assert step_statuses(ledger, saga_id) == {"a": "completed", "b": "running"}
    assert "execute:c" not in recorder.calls


def test_compensation_that_keeps_failing_stops_in_compensation_failed_then_resumes(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    recorder.fail_execute.add("c")
    recorder.fail_compensate["b"] = 99
    catalog = make_catalog(recorder)
    saga_id = new_saga(ledger, catalog)
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    assert saga.status is SagaStatus.COMPENSATION_FAILED
    assert saga.error is not None and "compensation of b failed: RuntimeError: undo of b broke" in saga.error
    assert "c broke" in saga.error  # the original failure is kept too
    steps = {s.step_name: s for s in ledger.list_step_results(saga_id)}
    assert steps["b"].status is StepStatus.COMPENSATION_FAILED
    assert steps["b"].compensation_attempts == settings.compensation_attempts
    assert steps["a"].status is StepStatus.COMPLETED  # not touched past the stuck undo

    recorder.fail_compensate["b"] = 0  # the operator fixed the cause
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    assert saga.status is SagaStatus.ROLLED_BACK
    assert step_statuses(ledger, saga_id) == {"a": "compensated", "b": "compensated", "c": "failed"}


def test_a_404_the_step_did_not_expect_is_a_failed_undo(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    # Only the step knows which 404 means "already gone"; the runner treats any other as failure.
    recorder.fail_execute.add("b")
    recorder.not_found_compensate.add("a")
    catalog = make_catalog(recorder)
    saga_id = new_saga(ledger, catalog)
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    assert saga.status is SagaStatus.COMPENSATION_FAILED
    assert recorder.calls.count("compensate:a") == settings.compensation_attempts


def test_cancel_between_steps_rolls_back(ledger: Ledger, settings: Settings, recorder: Recorder) -> None:
    catalog = make_catalog(recorder)
    saga_id = new_saga(ledger, catalog)
    recorder.during["b"] = lambda ctx: ledger.request_cancel(saga_id)
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    assert saga.status is SagaStatus.ROLLED_BACK
    assert "execute:c" not in recorder.calls
    assert "c" not in step_statuses(ledger, saga_id)  # the write that completed b saw the cancel
    assert saga.error is not None and "cancelled before step c" in saga.error


def test_a_saga_under_a_changed_definition_is_refused_and_its_lease_released(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    saga_id = new_saga(ledger, make_catalog(recorder))
    changed = make_catalog(recorder, steps=("a", "d", "c"), version="2")
    with pytest.raises(DefinitionMismatchError, match="v1"):
        make_runner(ledger, settings, changed).advance(saga_id)
    assert recorder.calls == []
    assert ledger.get_saga(saga_id).lease_owner is None  # released for whoever has the right code


def test_a_step_name_not_in_the_catalog_is_refused(recorder: Recorder) -> None:
    catalog = make_catalog(recorder)
    with pytest.raises(UnknownStepError, match=r"os\.system"):
        catalog.step("os.system")


def test_idempotent_create_with_a_caller_id(ledger: Ledger, recorder: Recorder) -> None:
    catalog = make_catalog(recorder)
    new = catalog.new_saga("chain", {"x": 1})
    first, created = ledger.create_saga(new)
    again, created_again = ledger.create_saga(new)
    assert (created, created_again) == (True, False)
    assert first.id == again.id
    assert len(ledger.list_sagas()) == 1


def _pivoting(ledger: Ledger, catalog: Catalog) -> uuid.UUID:
    saga, _ = ledger.create_saga(catalog.new_saga("pivoting", {"x": 1}))
    return saga.id


def test_after_the_pivot_a_failure_is_retried_forward(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    recorder.fail_execute_times["c"] = 2
    catalog = make_catalog(recorder)
    saga_id = _pivoting(ledger, catalog)
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    assert recorder.calls == ["execute:a", "execute:p", "execute:c", "execute:c", "execute:c"]
    assert not any(c.startswith("compensate") for c in recorder.calls)


def test_after_the_pivot_retries_end_in_failed_then_resume_finishes(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    recorder.fail_execute_times["c"] = 99
    catalog = make_catalog(recorder)
    saga_id = _pivoting(ledger, catalog)
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    assert saga.status is SagaStatus.FAILED
    assert saga.error is not None and "point of no return" in saga.error
    assert recorder.calls.count("execute:c") == settings.forward_attempts
    assert not any(c.startswith("compensate") for c in recorder.calls)

    recorder.fail_execute_times["c"] = 0  # the operator fixed it
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED
    assert recorder.calls.count("execute:p") == 1  # the pivot is never redone


def test_cancel_after_the_pivot_is_not_a_rollback(
    ledger: Ledger, settings: Settings, recorder: Recorder
) -> None:
    catalog = make_catalog(recorder)
    saga_id = _pivoting(ledger, catalog)
    recorder.during["p"] = lambda ctx: ledger.request_cancel(saga_id)
    saga = make_runner(ledger, settings, catalog).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED
    assert recorder.calls == ["execute:a", "execute:p", "execute:c"]
