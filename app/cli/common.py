"""What every ``sagas`` command shares: the consoles, exit codes, error mapping and input parsing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

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
    from sagas.context import parse_saga_id

    return parse_saga_id(raw)


def watching(application: App, saga_id: uuid.UUID, as_json: bool) -> SagaProgress:
    """Show the saga's steps move, on stderr: redrawn on a terminal, a line per change elsewhere."""
    from sagas.progress import SagaProgress

    return SagaProgress(application.ledger, saga_id, err, live=err.is_terminal and not as_json)
