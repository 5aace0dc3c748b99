"""Commands for operators: ``approve``, ``reject``, ``retry-compensation``, ``resolve``, ``orphans``.

Thin over ``sagas.operator``: every decision (what may be retried, resolved or deleted) is made
there, against the ledger; these commands parse, print and choose the exit code.
"""

from __future__ import annotations

import json
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
    fail,
    open_saga,
    out,
    say_outcome,
    secret_blocks_reachable,
    watching,
)
from app.cli.render import orphan_json, print_orphans, print_saga
from sagas.errors import DestructiveCapError
from sagas.models import ApprovalDecision, SagaStatus


def retry_compensation(
    saga_id: Annotated[
        str, typer.Argument(help="A compensation_failed saga (its id, or 8+ hex digits of it).")
    ],
    by: Annotated[str | None, typer.Option(help="Who retries it (default: your user name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    verbose: Verbose = False,
) -> None:
    """Finish the rollback of a compensation_failed saga once the cause is fixed; exit 0 when rolled back."""
    from sagas.operator.resolution import retry_compensation as retry

    terminal.be_verbose(verbose)
    with errors():
        application, target = open_saga(saga_id)
        runner = application.runner()
        try:
            with secret_blocks_reachable(application):
                saga = retry(runner, target, by=by or application.settings.user)
        finally:
            runner.services.close()
        print_saga(saga, application.ledger.list_step_results(saga.id), as_json)
        say_outcome(application, saga)
        raise typer.Exit(EXIT_OK if saga.status is SagaStatus.ROLLED_BACK else EXIT_NOT_COMPLETED)


def resolve(
    saga_id: Annotated[
        str, typer.Argument(help="The saga an operator fixed by hand (its id, or 8+ hex digits of it).")
    ],
    note: Annotated[str, typer.Option(help="What was done by hand, and why (required).")],
    by: Annotated[str | None, typer.Option(help="Who resolved it (default: your user name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Mark a saga resolved by hand: terminal, recorded with who/when/why; frees its resource."""
    from sagas.operator.resolution import resolve_saga

    with errors():
        application, target = open_saga(saga_id)
        saga = resolve_saga(
            application.ledger,
            target,
            by=by if by is not None else application.settings.user,
            note=note,
            lease_seconds=application.settings.lease_seconds,
        )
        print_saga(saga, application.ledger.list_step_results(saga.id), as_json)
        if not as_json:
            out.print(
                f"saga {saga.id} resolved by {saga.resolved_by}; `sagas orphans` lists anything it left",
                markup=False,
            )


def orphans(
    delete: Annotated[bool, typer.Option("--delete", help="Delete what is found (asks first).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="With --delete: do not ask.")] = False,
    by: Annotated[str | None, typer.Option(help="Who deletes (default: your user name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Provider resources named or tagged for a saga that no saga owns; --delete removes them."""
    import click

    from sagas.operator.orphans import DeletionOutcome, delete_orphans, find_orphans
    from sagas.settings import TokenPurpose

    def report(deletions: list[dict[str, object]]) -> None:
        out.print_json(json.dumps({"orphans": [orphan_json(o) for o in found], "deletions": deletions}))

    with errors():
        application = build()
        services = application.services()
        try:
            # Prefect's API for the tokens' Secret blocks, if named, until the last provider call.
            with secret_blocks_reachable(application):
                found = find_orphans(
                    application.ledger,
                    services.digitalocean(TokenPurpose.READ),
                    prefix=application.settings.name_prefix,
                )
                if not as_json:
                    print_orphans(found)
                if not delete or not found:
                    if as_json:
                        report([])
                    raise typer.Exit(EXIT_NOT_COMPLETED if found else EXIT_OK)
                if not yes:
                    try:
                        confirmed = typer.confirm(
                            f"delete these {len(found)} resources at the provider?", default=False, err=True
                        )
                    except click.exceptions.Abort:
                        confirmed = False
                    if not confirmed:
                        err.print("nothing deleted", markup=False)
                        if as_json:
                            report([])
                        raise typer.Exit(EXIT_NOT_COMPLETED)
                done = delete_orphans(
                    application.ledger,
                    services.digitalocean(TokenPurpose.PROVISIONING),
                    found,
                    by=by or application.settings.user,
                )
        finally:
            services.close()
        if as_json:
            report([d.model_dump(mode="json") for d in done])
        else:
            for d in done:
                action = f" (operator action {d.action.id})" if d.action else ""
                tail = f": {d.error}" if d.error else ""
                out.print(f"{d.orphan.target} {d.orphan.name}: {d.outcome.value}{action}{tail}", markup=False)
        ok = all(d.outcome in (DeletionOutcome.DELETED, DeletionOutcome.ALREADY_GONE) for d in done)
        raise typer.Exit(EXIT_OK if ok else EXIT_NOT_COMPLETED)


def _decide(saga_id: str, decision: ApprovalDecision, note: str, by: str | None, as_json: bool) -> None:
    from flows.approval import resume_with_answer
    from sagas.operator.approval import decide

    with errors():
        application, target = open_saga(saga_id)
        who = by if by is not None else application.settings.user
        saga = decide(application.ledger, target, decision, by=who, note=note)
        err.print(f"saga {saga.id} {decision.value} by {saga.approval_by}", markup=False)
        if resume_with_answer(saga, decision, by=saga.approval_by or who, note=note):
            err.print(f"its flow run {saga.flow_run_id} resumes it", markup=False)
            print_saga(
                application.ledger.get_saga(saga.id), application.ledger.list_step_results(saga.id), as_json
            )
            raise typer.Exit(EXIT_OK)
        # No suspended flow run to resume (a saga started by `sagas run`): run the rest here.
        runner = application.runner()
        try:
            with secret_blocks_reachable(application), watching(application, saga.id, as_json):
                final = runner.advance(saga.id)
        except DestructiveCapError as exc:
            # The decision is recorded; only the start waits (the recovery sweep starts it later).
            fail(
                EXIT_BUSY,
                f"saga {saga.id} is {decision.value} (recorded) but waits to start: {exc.reason};"
                f" the recovery sweep starts it once a place frees, or `sagas resume {saga.id}`",
            )
        finally:
            runner.services.close()
        print_saga(final, application.ledger.list_step_results(final.id), as_json)
        say_outcome(application, final)
        wanted = SagaStatus.COMPLETED if decision is ApprovalDecision.APPROVED else SagaStatus.ROLLED_BACK
        raise typer.Exit(EXIT_OK if final.status is wanted else EXIT_NOT_COMPLETED)


def approve(
    saga_id: Annotated[
        str, typer.Argument(help="A saga awaiting approval (its id, or 8+ hex digits of it).")
    ],
    note: Annotated[str, typer.Option(help="Why it may go on (required, recorded with your name).")],
    by: Annotated[str | None, typer.Option(help="Who approves (default: your user name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Approve a saga awaiting approval: it goes on past its point of no return (once; recorded)."""
    _decide(saga_id, ApprovalDecision.APPROVED, note, by, as_json)


def reject(
    saga_id: Annotated[
        str, typer.Argument(help="A saga awaiting approval (its id, or 8+ hex digits of it).")
    ],
    note: Annotated[str, typer.Option(help="Why it must not go on (required, recorded with your name).")],
    by: Annotated[str | None, typer.Option(help="Who rejects (default: your user name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Reject a saga awaiting approval: it rolls back (once; recorded)."""
    _decide(saga_id, ApprovalDecision.REJECTED, note, by, as_json)
