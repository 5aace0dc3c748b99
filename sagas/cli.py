"""The ``sagas`` command: parse, build the dependencies, call the code the flows call.

Exit codes scripts can rely on:
  0  done: ``run``/``resume``: the saga completed; ``cancel``: the request was recorded (or the
     saga rolled back); ``retry-compensation``: the saga is now rolled_back; ``resolve``: the saga
     is now resolved; ``orphans``: none found, or every one found was deleted; ``plan``, ``list``,
     ``show``: printed
  1  not done: the saga ended without completing (rolled_back, compensation_failed, failed,
     resolved); ``retry-compensation``: an undo failed again; ``orphans``: orphans remain (listed
     without ``--delete``, deletion declined, or a deletion failed)
  2  bad input, nothing was written: a malformed id, bad JSON or inputs, an empty ``--note``, or
     a command that does not apply to the saga's status (``retry-compensation`` on anything but
     compensation_failed; ``resolve`` on a completed, rolled_back or resolved saga)
  3  busy: another runner holds the saga; nothing was written
  4  no such saga
  5  the ledger, a setting or the provider failed

This module imports the flows (and so Prefect) only inside the commands that run one: the
composition root may look down every layer, nothing below it looks up. The operator commands
(``plan``, ``resolve``, ``retry-compensation``, ``orphans``) are thin over ``sagas.operator``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from sagas.errors import (
    ConfigurationError,
    InputError,
    LedgerError,
    ProviderError,
    ResourceBusyError,
    SagaBusyError,
    SagaError,
    SagaNotFoundError,
)
from sagas.models import SagaRun, SagaStatus, StepResult

if TYPE_CHECKING:
    from flows.app import App
    from sagas.operator import Orphan
    from sagas.progress import SagaProgress

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_BAD_INPUT, EXIT_BUSY, EXIT_NOT_FOUND, EXIT_FAILURE = range(6)

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Saga orchestration for cloud provisioning."
)
db_app = typer.Typer(no_args_is_help=True, help="The ledger database.")
app.add_typer(db_app, name="db")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@app.callback()
def _layout() -> None:
    # Piped or captured output has no terminal width to fit: lay tables out wide, so that ids and
    # names stay whole for grep. A terminal keeps its own width.
    if not out.is_terminal:
        out.width = 200


def _fail(code: int, message: str) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Map our error tree to exit codes, in one place."""
    try:
        yield
    except InputError as exc:
        _fail(EXIT_BAD_INPUT, str(exc))
    except (SagaBusyError, ResourceBusyError) as exc:
        _fail(EXIT_BUSY, str(exc))
    except SagaNotFoundError as exc:
        _fail(EXIT_NOT_FOUND, str(exc))
    except (ConfigurationError, LedgerError, ProviderError) as exc:
        _fail(EXIT_FAILURE, str(exc))
    except SagaError as exc:
        _fail(EXIT_FAILURE, str(exc))


def _app() -> App:
    from flows.app import build_app

    return build_app()


def _parse_inputs(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"--inputs is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(value, dict):
        raise InputError("--inputs must be a JSON object, e.g. '{\"droplet_id\": 123}'")
    return value


def _parse_id(raw: str) -> uuid.UUID:
    from sagas.context import parse_saga_id

    return parse_saga_id(raw)


# -- run / resume / cancel ---------------------------------------------------------------------


@app.command()
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
        float, typer.Option(help="If another saga holds the droplet, wait up to this many seconds.")
    ] = 0.0,
) -> None:
    """Run a saga through its Prefect flow; exit 0 only when it completed."""
    with _errors():
        parsed = _parse_inputs(inputs)
        step_list = [s.strip() for s in steps.split(",") if s.strip()] if steps is not None else None
        chosen_id = _parse_id(saga_id) if saga_id else uuid.uuid4()
        from tasks.registry import catalog

        # Validate everything before Prefect or the ledger is touched.
        new = catalog().new_saga(kind, parsed, steps=step_list, saga_id=chosen_id, triggered_by=triggered_by)
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            try:
                with watching(new.id, as_json):
                    saga = run_flow(new.kind, new.inputs, list(new.step_names), new.id, triggered_by)
                break
            except ResourceBusyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(2.0, max(deadline - time.monotonic(), 0.1)))
        _print_saga(saga, _app().ledger.list_step_results(saga.id), as_json)
        raise typer.Exit(EXIT_OK if saga.status is SagaStatus.COMPLETED else EXIT_NOT_COMPLETED)


def watching(saga_id: uuid.UUID, as_json: bool) -> SagaProgress:
    """Show the saga's steps move, on stderr: redrawn on a terminal, a line per change elsewhere."""
    from sagas.progress import SagaProgress

    return SagaProgress(_app().ledger, saga_id, err, live=err.is_terminal and not as_json)


def run_flow(
    kind: str, inputs: dict[str, Any], steps: list[str], saga_id: uuid.UUID, triggered_by: str
) -> SagaRun:
    """Run the kind's flow in this process and return the saga as the ledger has it afterwards."""
    from flows import flow_for

    flow, parameters_model = flow_for(kind)
    params: dict[str, Any] = {**inputs, "saga_id": saga_id, "triggered_by": triggered_by}
    if kind == "test":
        params["steps"] = steps
    try:
        flow(parameters_model(**params))
    except (SagaBusyError, ResourceBusyError):
        raise
    except SagaError as exc:
        if isinstance(exc, InputError):
            raise
        err.print(f"the flow run failed: {exc}", markup=False)
    except Exception as exc:  # the flow's own failure; the ledger says what became of the saga
        err.print(f"the flow run failed: {type(exc).__name__}: {exc}", markup=False)
    return _app().ledger.get_saga(saga_id)


@app.command()
def resume(
    saga_id: Annotated[str, typer.Argument(help="The saga to finish.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Finish a saga from where its ledger stands: forward, or on with its rollback."""
    with _errors():
        target = _parse_id(saga_id)
        application = _app()
        before = application.ledger.get_saga(target)
        if before.status.is_terminal:
            # Nothing to do, so claim nothing and write nothing (a resolved saga stays resolved).
            err.print(f"saga {target} is already {before.status.value}: nothing to resume", markup=False)
            _print_saga(before, application.ledger.list_step_results(target), as_json)
            raise typer.Exit(EXIT_OK if before.status is SagaStatus.COMPLETED else EXIT_NOT_COMPLETED)
        runner = application.runner()
        try:
            with watching(target, as_json):
                saga = runner.advance(target)
        finally:
            runner.services.close()
        _print_saga(saga, application.ledger.list_step_results(saga.id), as_json)
        raise typer.Exit(EXIT_OK if saga.status is SagaStatus.COMPLETED else EXIT_NOT_COMPLETED)


@app.command()
def cancel(saga_id: Annotated[str, typer.Argument(help="The saga to cancel.")]) -> None:
    """Ask a saga to stop and roll back. An idle saga is rolled back right here."""
    from sagas.runner import Mode

    with _errors():
        target = _parse_id(saga_id)
        application = _app()
        saga = application.provisioning().cancel_saga(target)
        if saga.status.is_terminal:
            out.print(f"saga {saga.id} is already {saga.status.value}; nothing to cancel")
            return
        runner = application.runner()
        try:
            saga = runner.advance(target, Mode.ROLLBACK, reason="cancelled by request")
            out.print(f"saga {saga.id} cancelled: {saga.status.value}")
            if saga.status is not SagaStatus.ROLLED_BACK:
                raise typer.Exit(EXIT_NOT_COMPLETED)
        except SagaBusyError:
            out.print(f"cancel recorded for saga {saga.id}: its runner rolls it back at the next safe point")
        finally:
            runner.services.close()


# -- reading -----------------------------------------------------------------------------------

_STYLES = {
    "completed": "green",
    "rolled_back": "yellow",
    "compensated": "yellow",
    "resolved": "cyan",
    "compensation_failed": "bold red",
    "failed": "bold red",
    "compensating": "magenta",
    "running": "blue",
    "pending": "dim",
    "skipped": "dim",
}


def _table(*headers: str, whole: tuple[str, ...] = ()) -> Table:
    """A table that folds long cells instead of cutting them; ``whole`` columns are never broken."""
    columns = [
        Column(h, no_wrap=h in whole, min_width=36 if h in whole else None, overflow="fold") for h in headers
    ]
    return Table(*columns)


def _status(value: str) -> Text:
    return Text(value, style=_STYLES.get(value, ""))


def _when(moment: datetime | None) -> str:
    return "" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def _took(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


@app.command("list")
def list_sagas(
    status: Annotated[str | None, typer.Option(help="Only sagas in this status.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only sagas of this kind.")] = None,
    deployment: Annotated[str | None, typer.Option(help="Only sagas for this deployment id.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List sagas, newest first."""
    with _errors():
        sagas = (
            _app().provisioning().list_sagas(status=status, kind=kind, deployment_id=deployment, limit=limit)
        )
        if as_json:
            out.print_json(json.dumps([_saga_json(s) for s in sagas]))
            return
        table = _table("id", "kind", "status", "resource", "created", "error", whole=("id",))
        for s in sagas:
            table.add_row(
                Text(str(s.id)),
                Text(s.kind),
                _status(s.status.value),
                Text(s.resource or ""),
                f"{s.created_at:%m-%d %H:%M}",
                Text((s.error or "")[:60]),
            )
        out.print(table)
        if not sagas:
            err.print("no sagas match", markup=False)


@app.command()
def show(
    saga_id: Annotated[str, typer.Argument(help="The saga to show.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    timeline: Annotated[
        bool, typer.Option("--timeline", help="Write the saga's timeline as an SVG file and print its path.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option(help="Where --timeline writes (default: ./saga-<id>.svg).")
    ] = None,
) -> None:
    """Show a saga and every step: status, idempotency key, resource ids, attempts, errors, timings."""
    with _errors():
        provisioning = _app().provisioning()
        saga = provisioning.get_saga(saga_id)
        steps = provisioning.list_step_results(saga.id)
        if timeline:
            from sagas.timeline import render_svg

            path = output or Path(f"saga-{saga.id}.svg")
            try:
                path.write_text(render_svg(saga, steps))
            except OSError as exc:
                _fail(EXIT_BAD_INPUT, f"cannot write the timeline to {path}: {exc.strerror}")
            out.print(str(path.resolve()), markup=False)
            return
        _print_saga(saga, steps, as_json)


def _saga_json(saga: SagaRun) -> dict[str, Any]:
    data = saga.model_dump(mode="json", exclude={"lease_owner"})
    return data


def _resource_ids(step: StepResult) -> dict[str, Any]:
    """What the step made or acted on at the provider, as its output recorded it."""
    return {k: v for k, v in sorted(step.output.items()) if k.endswith("_id") and v not in (None, "")}


def _step_json(step: StepResult) -> dict[str, Any]:
    data = step.model_dump(mode="json", exclude={"saga_id"})
    data["name"] = data.pop("step_name")
    data["resource_ids"] = _resource_ids(step)
    return data


def _print_saga(saga: SagaRun, steps: list[StepResult], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({**_saga_json(saga), "steps": [_step_json(s) for s in steps]}))
        return
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("saga", Text(str(saga.id)))
    head.add_row("kind", Text(f"{saga.kind} v{saga.definition_version} ({', '.join(saga.step_names)})"))
    head.add_row("status", _status(saga.status.value))
    head.add_row("inputs", Text(json.dumps(saga.inputs, sort_keys=True)))
    if saga.resource:
        head.add_row("resource", Text(saga.resource))
    head.add_row("triggered by", Text(saga.triggered_by))
    head.add_row("prefect flow run", Text(str(saga.flow_run_id) if saga.flow_run_id else "(none)"))
    head.add_row(
        "timings",
        Text(
            f"created {_when(saga.created_at)}, started {_when(saga.started_at) or '-'},"
            f" finished {_when(saga.finished_at) or '-'}"
            + (f" ({_took(saga.started_at, saga.finished_at)})" if saga.finished_at else "")
        ),
    )
    if saga.lease_expires_at is not None and saga.lease_owner is not None:
        head.add_row("held", Text(f"by a runner, lease until {_when(saga.lease_expires_at)}"))
    if saga.cancel_requested:
        head.add_row("cancel", Text("requested"))
    if saga.error:
        head.add_row("error", Text(saga.error, style="red"))
    if saga.status is SagaStatus.RESOLVED:
        head.add_row("resolved", Text(f"by {saga.resolved_by} at {_when(saga.resolved_at)}"))
        head.add_row("note", Text(saga.resolution_note or ""))
    out.print(head)
    # The step's name and its idempotency key share a column that is never broken: the key is
    # what an operator searches the provider for. Errors go below the table, whole.
    ids = max([len(f"{k}={v}") for s in steps for k, v in _resource_ids(s).items()] + [9])
    table = Table(
        "#",
        Column("step / idempotency key", no_wrap=True, min_width=30, overflow="fold"),
        Column("status", no_wrap=True),
        Column("resources", no_wrap=True, min_width=min(ids, 22), overflow="fold"),
        Column("tries", justify="right", no_wrap=True),
        Column("timings", overflow="fold"),
    )
    errors = []
    for s in steps:
        timings = []
        if s.started_at:
            took = _took(s.started_at, s.completed_at)
            timings.append(f"ran {s.started_at:%H:%M:%S}" + (f" {took}" if took else ""))
        if s.compensated_at:
            timings.append(f"undone {s.compensated_at:%H:%M:%S}")
        elif s.compensation_started_at:
            timings.append(f"undo {s.compensation_started_at:%H:%M:%S}")
        table.add_row(
            str(s.step_idx),
            Text(f"{s.step_name}\n{s.idempotency_key or '-'}"),
            _status(s.status.value),
            Text("\n".join(f"{k}={v}" for k, v in _resource_ids(s).items())),
            f"{s.attempts}/{s.compensation_attempts}" if s.compensation_attempts else str(s.attempts),
            Text("\n".join(timings)),
        )
        if s.error:
            errors.append(Text.assemble(f"step {s.step_idx} {s.step_name}: ", (s.error, "red")))
    recorded = {s.step_name for s in steps}
    for idx, name in enumerate(saga.step_names):
        if name not in recorded:
            table.add_row(str(idx), Text(f"{name}\n(not started)"), _status("pending"), "", "0/0", "")
    out.print(table)
    out.print("tries: runs/undos; times are the step's (dates in the saga's timings)", style="dim")
    for line in errors:
        out.print(line)


# -- operators ---------------------------------------------------------------------------------


@app.command("retry-compensation")
def retry_compensation(
    saga_id: Annotated[str, typer.Argument(help="A compensation_failed saga.")],
    by: Annotated[str | None, typer.Option(help="Who retries it (default: your user name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Finish the rollback of a compensation_failed saga once the cause is fixed; exit 0 when rolled back."""
    from sagas.operator import retry_compensation as retry

    with _errors():
        target = _parse_id(saga_id)
        application = _app()
        runner = application.runner()
        try:
            saga = retry(runner, target, by=by or application.settings.user)
        finally:
            runner.services.close()
        _print_saga(saga, application.ledger.list_step_results(saga.id), as_json)
        if saga.status is not SagaStatus.ROLLED_BACK:
            err.print(f"saga {saga.id} is {saga.status.value}: {saga.error}", markup=False)
        raise typer.Exit(EXIT_OK if saga.status is SagaStatus.ROLLED_BACK else EXIT_NOT_COMPLETED)


@app.command()
def resolve(
    saga_id: Annotated[str, typer.Argument(help="The saga an operator fixed by hand.")],
    note: Annotated[str, typer.Option(help="What was done by hand, and why (required).")],
    by: Annotated[str | None, typer.Option(help="Who resolved it (default: your user name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Mark a saga resolved by hand: terminal, recorded with who/when/why; frees its resource."""
    from sagas.operator import resolve_saga

    with _errors():
        target = _parse_id(saga_id)
        application = _app()
        saga = resolve_saga(
            application.ledger,
            target,
            by=by if by is not None else application.settings.user,
            note=note,
            lease_seconds=application.settings.lease_seconds,
        )
        _print_saga(saga, application.ledger.list_step_results(saga.id), as_json)
        if not as_json:
            out.print(
                f"saga {saga.id} resolved by {saga.resolved_by}; `sagas orphans` lists anything it left",
                markup=False,
            )


@app.command()
def plan(
    kind: Annotated[str, typer.Argument(help="Saga kind, e.g. snapshot or test.")],
    inputs: Annotated[
        str, typer.Option(help="Inputs as a JSON object, e.g. '{\"droplet_id\": 123}'.")
    ] = "{}",
    steps: Annotated[str | None, typer.Option(help="For the test kind: step names, comma-separated.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Dry run: the steps a saga would run, the names they would use, and how each is undone.

    Touches neither the provider nor the ledger.
    """
    from sagas.operator import plan_saga
    from sagas.settings import load_settings
    from tasks.registry import catalog

    with _errors():
        parsed = _parse_inputs(inputs)
        step_list = [s.strip() for s in steps.split(",") if s.strip()] if steps is not None else None
        planned = plan_saga(catalog(), kind, parsed, steps=step_list, prefix=load_settings().name_prefix)
        if as_json:
            out.print_json(planned.model_dump_json())
            return
        out.print(
            f"plan for a {planned.kind} saga (v{planned.definition_version}) with inputs"
            f" {json.dumps(planned.inputs, sort_keys=True)}",
            markup=False,
        )
        out.print(
            f"placeholder saga id {planned.placeholder_saga_id}: a real run gets its own id, so the"
            " names below end differently",
            markup=False,
        )
        if planned.resource:
            out.print(
                f"holds {planned.resource} while it runs (one unfinished saga per resource)", markup=False
            )
        # One block per step rather than a table: names must survive any terminal width whole.
        for step in planned.steps:
            out.print()
            line = Text(f"{step.index}  {step.name}  ")
            line.append(
                step.reversibility.value, style="bold red" if step.reversibility == "pivot" else "bold"
            )
            out.print(line)
            out.print(Text(f"   name: {step.idempotency_key}"))
            out.print(Text(f"   does: {step.does}"))
            out.print(Text(f"   undo: {step.compensation}"))
        out.print()
        out.print("nothing was written: not to the provider, not to the ledger", markup=False)


@app.command()
def orphans(
    delete: Annotated[bool, typer.Option("--delete", help="Delete what is found (asks first).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="With --delete: do not ask.")] = False,
    by: Annotated[str | None, typer.Option(help="Who deletes (default: your user name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Provider resources named or tagged for a saga that no saga owns; --delete removes them."""
    import click

    from sagas.operator import DeletionOutcome, delete_orphans, find_orphans
    from sagas.services import Services
    from sagas.settings import TokenPurpose

    with _errors():
        application = _app()
        services = Services(application.settings)
        try:
            found = find_orphans(
                application.ledger,
                services.digitalocean(TokenPurpose.READ),
                prefix=application.settings.name_prefix,
            )
            if not as_json:
                _print_orphans(found)
            if not delete or not found:
                if as_json:
                    out.print_json(json.dumps({"orphans": [_orphan_json(o) for o in found], "deletions": []}))
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
                        out.print_json(
                            json.dumps({"orphans": [_orphan_json(o) for o in found], "deletions": []})
                        )
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
            out.print_json(
                json.dumps(
                    {
                        "orphans": [_orphan_json(o) for o in found],
                        "deletions": [d.model_dump(mode="json") for d in done],
                    }
                )
            )
        else:
            for d in done:
                action = f" (operator action {d.action.id})" if d.action else ""
                tail = f": {d.error}" if d.error else ""
                out.print(f"{d.orphan.target} {d.orphan.name}: {d.outcome.value}{action}{tail}", markup=False)
        ok = all(d.outcome in (DeletionOutcome.DELETED, DeletionOutcome.ALREADY_GONE) for d in done)
        raise typer.Exit(EXIT_OK if ok else EXIT_NOT_COMPLETED)


def _orphan_json(orphan: Orphan) -> dict[str, Any]:
    return {**orphan.model_dump(mode="json"), "target": orphan.target}


def _print_orphans(found: list[Orphan]) -> None:
    if not found:
        out.print("no orphans: every saga-named or saga-tagged resource belongs to a saga", markup=False)
        return
    # One block per orphan: ids and names must survive any terminal width whole.
    out.print(f"{len(found)} orphan(s): named or tagged for a saga, owned by none", markup=False)
    for o in found:
        out.print()
        out.print(Text.assemble((o.target, "bold"), f"  {o.name}"))
        if o.saga_id:
            saga = f"   saga: {o.saga_id} ({o.saga_status.value if o.saga_status else 'unknown'})"
            if o.step_name and o.step_status:
                saga += f", step {o.step_name} ({o.step_status.value})"
            out.print(Text(saga))
        out.print(Text(f"   why:  {o.reason}"))
    out.print()


# -- tools -------------------------------------------------------------------------------------


@app.command()
def simulator(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8765,
    time_scale: Annotated[float, typer.Option(help="Multiply every simulated duration by this.")] = 1.0,
) -> None:
    """Run the DigitalOcean API simulator on 127.0.0.1 (control endpoint under /_sim)."""
    from sagas.digitalocean.simulator import SimulatorConfig, serve

    if not 0 < port < 65536:
        _fail(EXIT_BAD_INPUT, "--port must be between 1 and 65535")
    out.print(f"DigitalOcean simulator on http://127.0.0.1:{port} (time scale {time_scale})")
    serve(host="127.0.0.1", port=port, config=SimulatorConfig(time_scale=time_scale))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the ledger's migrations (they are also applied on first use)."""
    from sagas.ledger.database import engine_for
    from sagas.settings import load_settings

    with _errors():
        engine_for(load_settings())
        out.print("ledger schema is at the latest revision")


@app.command()
def demo() -> None:
    """Replay the seed's live smoke on the embedded database and a simulator started here."""
    from sagas.demo import run_demo

    with _errors():
        raise typer.Exit(run_demo(out))


def _exit_on_sigterm() -> None:
    """SIGTERM exits normally, so atexit handlers (the embedded server's handle) run."""
    previous: Callable[..., Any] | int | None = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> None:
    _exit_on_sigterm()
    app()


if __name__ == "__main__":
    main()
