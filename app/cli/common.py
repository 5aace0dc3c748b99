"""What every ``sagas`` command shares: the consoles, exit codes, error mapping and input parsing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from sagas.errors import (
    ConfigurationError,
    DestructiveCapError,
    InputError,
    LedgerError,
    ProviderError,
    ResourceBusyError,
    SagaBusyError,
    SagaError,
    SagaNotFoundError,
)
from sagas.models import SagaStatus

if TYPE_CHECKING:
    from app.wiring import App
    from sagas.models import SagaRun
    from sagas.progress import SagaProgress

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_BAD_INPUT, EXIT_BUSY, EXIT_NOT_FOUND, EXIT_FAILURE, EXIT_AWAITING = range(7)


def exit_code_of(status: SagaStatus) -> int:
    """What ``run`` and ``resume`` exit with for a saga in ``status``."""
    if status is SagaStatus.COMPLETED:
        return EXIT_OK
    if status is SagaStatus.AWAITING_APPROVAL:
        return EXIT_AWAITING
    return EXIT_NOT_COMPLETED


out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="Show debug logs (ours and Prefect's) and the traceback of every failure.",
    ),
]


def fail(code: int, message: str) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Map our error tree to exit codes, in one place."""
    try:
        yield
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    except (SagaBusyError, ResourceBusyError, DestructiveCapError) as exc:
        fail(EXIT_BUSY, str(exc))
    except SagaNotFoundError as exc:
        fail(EXIT_NOT_FOUND, str(exc))
    except (ConfigurationError, LedgerError, ProviderError) as exc:
        fail(EXIT_FAILURE, str(exc))
    except SagaError as exc:
        fail(EXIT_FAILURE, str(exc))


def build() -> App:
    from app.wiring import build_app

    return build_app()


@contextmanager
def secret_blocks_reachable(application: App) -> Iterator[None]:
    """Prefect's API, for a command that runs no flow but may read a token from a Secret block.

    Only when the settings name a block (a temporary server costs seconds and nothing else in
    these commands uses Prefect); unreached, Prefect would start its own, which outlives a kill -9.
    """
    settings = application.settings
    if not (settings.do_token_provisioning_block or settings.do_token_read_block):
        yield
        return
    from app.prefect_server import prefect_api

    with prefect_api() as api:
        api.ready()
        yield


def parse_inputs(raw: str) -> dict[str, Any]:
    """``--inputs``, a JSON object, read as written: a repeated key or NaN is refused, not guessed at."""
    try:
        value = json.loads(raw, object_pairs_hook=_no_repeated_keys, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise InputError(f"--inputs is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(value, dict):
        raise InputError("--inputs must be a JSON object, e.g. '{\"droplet_id\": 123}'")
    return value


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        repeated = sorted({k for k, _ in pairs if [p for p, _ in pairs].count(k) > 1})
        raise InputError(
            f"--inputs gives {', '.join(map(repr, repeated))} more than once: give each input once"
        )
    return value


def _not_json(constant: str) -> Any:
    raise InputError(f"--inputs contains {constant}, which is not a JSON number")


def parse_steps(raw: str | None) -> list[str] | None:
    return [s.strip() for s in raw.split(",") if s.strip()] if raw is not None else None


def parse_id(raw: str) -> uuid.UUID:
    """A new saga's id (``--saga-id``): a whole UUID."""
    from sagas.context import parse_saga_id

    return parse_saga_id(raw)


def read_id(raw: str) -> uuid.UUID | str:
    """An existing saga's id as given, its shape checked before anything connects: the whole id, or
    the start of one (8 hex digits or more); ``find_id`` looks a start up."""
    from sagas.context import saga_id_or_start

    return saga_id_or_start(raw)


def find_id(application: App, given: uuid.UUID | str) -> uuid.UUID:
    """The saga meant by ``read_id``'s answer: a whole id as it is, a start looked up (unique)."""
    return application.provisioning().find_saga_id(given)


def open_saga(raw: str) -> tuple[App, uuid.UUID]:
    """The application and the saga meant by ``raw``: its shape checked before anything connects
    (``read_id``), then the application built, then the saga looked up (``find_id``)."""
    given = read_id(raw)
    application = build()
    return application, find_id(application, given)


def say_which_ledger(application: App) -> None:
    """On stderr, in one dim line: the ledger read is the embedded one (a user who forgot
    SAGAS_DATABASE_URL would otherwise see the demo's sagas and take them for production's)."""
    if application.settings.database_url is None:
        err.print(
            f"ledger: the embedded Postgres in {application.settings.home}"
            " (set SAGAS_DATABASE_URL for another)",
            style="dim",
            markup=False,
        )


def say_outcome(application: App, saga: SagaRun, line: str | None = None) -> None:
    """The saga's outcome in the one line every surface uses, on stderr (stdout stays the saga)."""
    from sagas.outcome import outcome_line

    line = line or outcome_line(saga, application.ledger.list_step_results(saga.id))
    err.print(line, markup=False, style="green" if saga.status.value == "completed" else "")


def watching(application: App, saga_id: uuid.UUID, as_json: bool) -> SagaProgress:
    """Show the saga's steps move, on stderr: redrawn on a terminal, a line per change elsewhere."""
    from sagas.progress import SagaProgress

    return SagaProgress(application.ledger, saga_id, err, live=err.is_terminal and not as_json)
