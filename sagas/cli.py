"""The ``sagas`` command: parse, build the dependencies, call the code the flows call.

Exit codes scripts can rely on:
  0  done (for ``run``/``resume``: the saga completed; for ``cancel``: the request was recorded)
  1  the saga ended without completing (rolled_back, compensation_failed, failed)
  2  bad input: nothing was written
  3  busy: another runner holds the saga; nothing was written
  4  no such saga
  5  the ledger, a setting or the provider failed

This module imports the flows (and so Prefect) only inside the commands that run one: the
composition root may look down every layer, nothing below it looks up.
"""

from __future__ import annotations

import json
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from sagas.errors import (
    ConfigurationError,
    InputError,
    LedgerError,
    ProviderError,
    SagaBusyError,
    SagaError,
    SagaNotFoundError,
)
from sagas.models import SagaRun, SagaStatus, StepResult

if TYPE_CHECKING:
    from flows.app import App

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_BAD_INPUT, EXIT_BUSY, EXIT_NOT_FOUND, EXIT_FAILURE = range(6)

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Saga orchestration for cloud provisioning."
)
db_app = typer.Typer(no_args_is_help=True, help="The ledger database.")
app.add_typer(db_app, name="db")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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
    except SagaBusyError as exc:
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
) -> None:
    """Run a saga through its Prefect flow; exit 0 only when it completed."""
    with _errors():
        parsed = _parse_inputs(inputs)
        step_list = [s.strip() for s in steps.split(",") if s.strip()] if steps is not None else None
        chosen_id = _parse_id(saga_id) if saga_id else uuid.uuid4()
        from tasks.registry import catalog

        # Validate everything before Prefect or the ledger is touched.
        new = catalog().new_saga(kind, parsed, steps=step_list, saga_id=chosen_id, triggered_by=triggered_by)
        saga = run_flow(new.kind, new.inputs, list(new.step_names), new.id, triggered_by)
        _print_saga(saga, _app().ledger.list_step_results(saga.id), as_json)
        raise typer.Exit(EXIT_OK if saga.status is SagaStatus.COMPLETED else EXIT_NOT_COMPLETED)


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
    except SagaBusyError:
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
        runner = application.runner()
        try:
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


@app.command("list")
def list_sagas(
    status: Annotated[str | None, typer.Option(help="Only sagas in this status.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only sagas of this kind.")] = None,
    deployment: Annotated[str | None, typer.Option(help="Only sagas for this deployment id.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List sagas, newest first."""
    with _errors():
        sagas = (
            _app().provisioning().list_sagas(status=status, kind=kind, deployment_id=deployment, limit=limit)
        )
        if as_json:
            out.print_json(json.dumps([_saga_json(s) for s in sagas]))
            return
        table = Table("id", "kind", "status", "created", "triggered by", "error")
        for s in sagas:
            table.add_row(
                str(s.id),
                s.kind,
                s.status.value,
                f"{s.created_at:%Y-%m-%d %H:%M:%S}",
                s.triggered_by,
                (s.error or "")[:60],
            )
        out.print(table)


@app.command()
def show(
    saga_id: Annotated[str, typer.Argument(help="The saga to show.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a saga with every step: status, idempotency key, output, attempts, error."""
    with _errors():
        provisioning = _app().provisioning()
        saga = provisioning.get_saga(saga_id)
        _print_saga(saga, provisioning.list_step_results(saga.id), as_json)


def _saga_json(saga: SagaRun) -> dict[str, Any]:
    data = saga.model_dump(mode="json", exclude={"lease_owner"})
    return data


def _step_json(step: StepResult) -> dict[str, Any]:
    data = step.model_dump(mode="json", exclude={"saga_id"})
    data["name"] = data.pop("step_name")
    return data


def _print_saga(saga: SagaRun, steps: list[StepResult], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({**_saga_json(saga), "steps": [_step_json(s) for s in steps]}))
        return
    out.print(f"saga {saga.id}  kind={saga.kind}  status={saga.status.value}", markup=False)
    if saga.flow_run_id:
        out.print(f"prefect flow run: {saga.flow_run_id}", markup=False)
    if saga.error:
        out.print(f"error: {saga.error}", markup=False)
    table = Table("#", "step", "status", "idempotency key", "output", "attempts", "error")
    for s in steps:
        table.add_row(
            str(s.step_idx),
            s.step_name,
            s.status.value,
            s.idempotency_key or "",
            json.dumps(s.output, sort_keys=True),
            f"{s.attempts}/{s.compensation_attempts}",
            s.error or "",
        )
    out.print(table)


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
