"""Commands for people who run sagas: ``run``, ``resume``, ``cancel``."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import typer

from app.cli import terminal
from app.cli.common import (
    EXIT_BUSY,
    EXIT_NOT_COMPLETED,
    EXIT_OK,
    Verbose,
    build,
    err,
    errors,
    exit_code_of,
    fail,
    open_saga,
    out,
    parse_id,
    parse_inputs,
    parse_steps,
    say_outcome,
    secret_blocks_reachable,
    watching,
)
from app.cli.render import print_saga
from app.prefect_server import prefect_api
from app.running import run_flow
from app.wiring import App
from sagas.errors import ResourceBusyError, SagaBusyError
from sagas.models import Admission, SagaRun, SagaStatus

ADMISSION_POLL_SECONDS = 1.0  # how often `run --wait` asks for a place under the destructive caps


def run(
    kind: Annotated[str, typer.Argument(help="Saga kind, e.g. snapshot or test.")],
    inputs: Annotated[
        str, typer.Option(help="Inputs as a JSON object, e.g. '{\"droplet_id\": 123}'.")
    ] = "{}",
    steps: Annotated[str | None, typer.Option(help="For the test kind: step names, comma-separated.")] = None,
    saga_id: Annotated[
        str | None, typer.Option(help="Your own saga id (UUID): reruns are idempotent.")
    ] = None,
    triggered_by: Annotated[str, typer.Option(help="Who asked, recorded in the ledger.")] = "cli",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    wait: Annotated[
        float,
        typer.Option(
            help="If another saga holds the droplet, or too many destructive sagas run, wait up to"
            " this many seconds (a wait for a place is recorded in the ledger)."
        ),
    ] = 0.0,
    require_approval: Annotated[
        bool | None,
        typer.Option(
            "--require-approval/--no-require-approval",
            help="Stop for a person's approval before the first customer-visible change"
            " (default: the kind's: on for offboard and rollback).",
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Run a saga through its Prefect flow; exit 0 only when it completed (6: awaiting approval)."""
    terminal.be_verbose(verbose)
    with errors():
        parsed = parse_inputs(inputs)
        chosen_id = parse_id(saga_id) if saga_id is not None else uuid.uuid4()
        from tasks.registry import catalog

        # Validate everything before Prefect or the ledger is touched.
        options = {} if require_approval is None else {"require_approval": require_approval}
        new = catalog().new_saga(
            kind,
            parsed,
            steps=parse_steps(steps),
            saga_id=chosen_id,
            triggered_by=triggered_by,
            options=options,
        )
        with prefect_api() as api:  # the temporary server boots while the ledger is opened
            application = build()
            api.ready()
            deadline = time.monotonic() + max(wait, 0.0)
            # Recorded here, before the flow runs (which then finds it by its id): a refusal (the
            # droplet is busy, or too many destructive sagas run) writes nothing; with --wait a saga
            # over the caps is recorded waiting, and waits here, for `sagas show` to see.
            while True:
                try:
                    saga = application.provisioning().create_saga(
                        new.kind,
                        new.inputs,
                        steps=parse_steps(steps),
                        saga_id=new.id,
                        triggered_by=triggered_by,
                        options=options,
                        admission=Admission.WAIT if wait > 0 else Admission.REFUSE,
                    )
                    break
                except ResourceBusyError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(min(2.0, max(deadline - time.monotonic(), 0.1)))
            if saga.waiting_for_admission:
                _wait_for_a_place(application, saga, deadline, wait)
            with watching(application, new.id, as_json):
                outcome = run_flow(
                    application,
                    new.kind,
                    new.inputs,
                    list(new.step_names),
                    new.id,
                    triggered_by,
                    errors_to=err,
                    options=options,
                )
        saga = outcome.saga
        print_saga(saga, application.ledger.list_step_results(saga.id), as_json)
        say_outcome(application, saga, outcome.line)
        raise typer.Exit(exit_code_of(saga.status))


def _wait_for_a_place(application: App, saga: SagaRun, deadline: float, wait: float) -> None:
    """Wait (recorded in the ledger) until the destructive saga takes a place under the caps; at
    the deadline, or on Ctrl-C, cancel it (nothing ran: it rolls back with nothing to undo)."""
    err.print(f"saga {saga.id} waits to start: {saga.waiting_reason} (for up to {wait:.0f}s)", markup=False)
    reason = saga.waiting_reason or ""
    try:
        while time.monotonic() < deadline:
            time.sleep(min(ADMISSION_POLL_SECONDS, max(deadline - time.monotonic(), 0.05)))
            saga = application.ledger.admit(saga.id, application.settings.destructive_caps)
            if not saga.waiting_for_admission:
                return  # admitted, or no longer waiting (cancelled meanwhile): the flow says what became of it
            reason = saga.waiting_reason or reason
    except KeyboardInterrupt:
        _give_up(application, saga.id, "interrupted while it waited to start")
        raise
    _give_up(application, saga.id, f"gave up after waiting {wait:.0f}s to start: {reason}")
    fail(
        EXIT_BUSY,
        f"saga {saga.id} waited {wait:.0f}s to start and was cancelled (nothing ran): {reason}",
    )


def _give_up(application: App, saga_id: uuid.UUID, why: str) -> None:
    from sagas.runner import Mode

    application.ledger.request_cancel(saga_id)
    runner = application.runner()
    try:
        runner.advance(saga_id, Mode.ROLLBACK, reason=why)
    except SagaBusyError:
        pass  # a runner took it meanwhile: it sees the cancel at its first safe point
    finally:
        runner.services.close()


def resume(
    saga_id: Annotated[str, typer.Argument(help="The saga to finish (its id, or 8+ hex digits of it).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    verbose: Verbose = False,
) -> None:
    """Finish a saga from where its ledger stands: forward, or on with its rollback."""
    terminal.be_verbose(verbose)
    with errors():
        application, target = open_saga(saga_id)
        before = application.ledger.get_saga(target)
        if before.status.is_terminal:
            # Nothing to do, so claim nothing and write nothing (a resolved saga stays resolved).
            err.print(f"saga {target} is already {before.status.value}: nothing to resume", markup=False)
            print_saga(before, application.ledger.list_step_results(target), as_json)
            raise typer.Exit(EXIT_OK if before.status is SagaStatus.COMPLETED else EXIT_NOT_COMPLETED)
        runner = application.runner()
        try:
            with secret_blocks_reachable(application), watching(application, target, as_json):
                saga = runner.advance(target)
        finally:
            runner.services.close()
        print_saga(saga, application.ledger.list_step_results(saga.id), as_json)
        say_outcome(application, saga)
        raise typer.Exit(exit_code_of(saga.status))


def cancel(
    saga_id: Annotated[str, typer.Argument(help="The saga to cancel (its id, or 8+ hex digits of it).")],
    verbose: Verbose = False,
) -> None:
    """Ask a saga to stop and roll back. An idle saga is rolled back right here."""
    from sagas.runner import Mode

    terminal.be_verbose(verbose)
    with errors():
        application, target = open_saga(saga_id)
        saga = application.provisioning().cancel_saga(target)
        if saga.status.is_terminal:
            out.print(f"saga {saga.id} is already {saga.status.value}; nothing to cancel")
            return
        runner = application.runner()
        try:
            with secret_blocks_reachable(application):
                saga = runner.advance(target, Mode.ROLLBACK, reason="cancelled by request")
            out.print(f"saga {saga.id} cancelled: {saga.status.value}")
            if saga.status.is_terminal:
                from flows.approval import end_a_suspended_run

                end_a_suspended_run(saga, f"saga {saga.id} was cancelled while it awaited approval")
            if saga.status is not SagaStatus.ROLLED_BACK:
                raise typer.Exit(EXIT_NOT_COMPLETED)
        except SagaBusyError:
            out.print(f"cancel recorded for saga {saga.id}: its runner rolls it back at the next safe point")
        finally:
            runner.services.close()
