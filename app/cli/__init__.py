"""The ``sagas`` command: parse, build the dependencies, call the code the flows call.

The commands live by audience: ``run`` (run, resume, cancel), ``inspect`` (list, show, plan),
``operate`` (approve, reject, retry-compensation, resolve, orphans), ``work`` (worker: run a
queue's sagas), ``metrics`` (print once, serve for Prometheus), ``tools`` (simulator, db upgrade,
demo).

Exit codes scripts can rely on:
  0  done: ``run``/``resume``: the saga completed; ``cancel``: the request was recorded (or the
     saga rolled back); ``retry-compensation``: the saga is now rolled_back; ``resolve``: the saga
     is now resolved; ``orphans``: none found, or every one found was deleted; ``plan``, ``list``,
     ``show``, ``metrics``: printed (``metrics serve``: stopped by Ctrl-C or SIGTERM)
  1  not done: the saga ended without completing (rolled_back, compensation_failed, failed,
     resolved); ``retry-compensation``: an undo failed again; ``orphans``: orphans remain (listed
     without ``--delete``, deletion declined, or a deletion failed)
  2  bad input, nothing was written: a malformed id, an id start several sagas share (listed),
     bad JSON or inputs, an empty ``--note``, a ``metrics serve`` address it cannot listen on, or
     a command that does not apply to the saga's status (``retry-compensation`` on anything but
     compensation_failed; ``resolve`` on a completed, rolled_back or resolved saga)
  3  busy: another runner holds the saga, another saga holds the droplet, or too many destructive
     sagas run for the account or the customer deployment (``SAGAS_MAX_DESTRUCTIVE_*``); nothing
     was written (``run --wait`` waits instead, recorded, and exits 3 if it gave up; ``approve``
     records the decision and exits 3 when the approved saga must wait for a place)
  4  no such saga (no saga id starts with the start given)
  5  the ledger, a setting or the provider failed
  6  ``run``/``resume``: the saga stopped awaiting a person's approval; ``sagas approve ID --note``
     (or ``sagas reject``) decides, and runs the rest when no flow run is suspended for it

A saga is named by its id or by a unique start of it (8 hex digits or more). Prefect is imported only
inside the commands that run a flow.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

import typer

from app.cli import inspect, operate, run, terminal, tools, work
from app.cli.common import out
from app.cli.metrics import metrics

cli = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Saga orchestration for cloud provisioning."
)
db = typer.Typer(no_args_is_help=True, help="The ledger database.")
cli.add_typer(db, name="db")
cli.add_typer(metrics, name="metrics")

cli.command()(run.run)
cli.command()(run.resume)
cli.command()(run.cancel)
cli.command("list")(inspect.list_sagas)
cli.command()(inspect.show)
cli.command()(inspect.plan)
cli.command()(operate.approve)
cli.command()(operate.reject)
cli.command("retry-compensation")(operate.retry_compensation)
cli.command()(operate.resolve)
cli.command()(operate.orphans)
cli.command()(work.worker)
cli.command()(tools.simulator)
cli.command()(tools.demo)
db.command("upgrade")(tools.db_upgrade)


@cli.callback()
def _layout(ctx: typer.Context) -> None:
    # Piped or captured output has no terminal width to fit: lay tables out wide, so that ids and
    # names stay whole for grep. A terminal keeps its own width.
    if not out.is_terminal:
        out.width = 200
    # Log records print the quiet way (``app.cli.terminal``) until the command ends; ``--verbose``
    # on a command turns everything on.
    ctx.call_on_close(terminal.install())


def _exit_on_sigterm() -> None:
    """SIGTERM exits normally, so atexit handlers (the embedded server's handle) run."""
    previous: Callable[..., Any] | int | None = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> None:
    _exit_on_sigterm()
    cli()
