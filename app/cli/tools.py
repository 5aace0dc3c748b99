"""Commands for developers and set-up: ``simulator``, ``db upgrade``, ``demo``."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli import terminal
from app.cli.common import EXIT_BAD_INPUT, Verbose, errors, fail, out


def simulator(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8765,
    time_scale: Annotated[float, typer.Option(help="Multiply every simulated duration by this.")] = 1.0,
) -> None:
    """Run the DigitalOcean API simulator on 127.0.0.1 (control endpoint under /_sim)."""
    from sagas.digitalocean.simulator import SimulatorConfig, serve

    if not 0 < port < 65536:
        fail(EXIT_BAD_INPUT, "--port must be between 1 and 65535")
    out.print(f"DigitalOcean simulator on http://127.0.0.1:{port} (time scale {time_scale})")
    serve(host="127.0.0.1", port=port, config=SimulatorConfig(time_scale=time_scale))


def db_upgrade() -> None:
    """Apply the ledger's migrations (they are also applied on first use)."""
    from sagas.ledger.database import engine_for
    from sagas.settings import load_settings

    with errors():
        engine_for(load_settings())
        out.print("ledger schema is at the latest revision")


def demo(verbose: Verbose = False) -> None:
    """Replay the seed's live smoke on the embedded database and a simulator started here."""
    from app.demo import run_demo

    terminal.be_verbose(verbose)
    with errors():
        raise typer.Exit(run_demo(out))
