"""``sagas metrics``: the system in numbers, in Prometheus text format, read from the ledger.

``sagas metrics`` prints them once; ``sagas metrics serve`` answers scrapes on ``/metrics``, on
127.0.0.1:9464 unless ``--host`` / ``--port`` say otherwise (the numbers name sagas' kinds and
steps, not secrets, but a metrics port is still nobody else's business by default). Each scrape
reads the ledger (``sagas.metrics``); nothing is kept in this process.

``prometheus_client`` is imported only when a command runs.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from app.cli.common import EXIT_BAD_INPUT, build, errors, fail, out

metrics = typer.Typer(
    invoke_without_command=True,
    help="The system in numbers (Prometheus text format): print them once, or `serve` them.",
)


@metrics.callback()
def print_once(ctx: typer.Context) -> None:
    """Print every metric once, in Prometheus text format, and exit."""
    if ctx.invoked_subcommand is not None:
        return
    from prometheus_client import generate_latest

    with errors():
        text = generate_latest(build().metrics_registry()).decode()
    sys.stdout.write(text)  # as is: label values are not console markup


@metrics.command()
def serve(
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 9464,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 (or ::) exposes it beyond this machine.")
    ] = "127.0.0.1",
) -> None:
    """Answer Prometheus scrapes on http://HOST:PORT/metrics until stopped (Ctrl-C, SIGTERM)."""
    from prometheus_client import start_http_server

    if not 0 <= port < 65536:
        fail(EXIT_BAD_INPUT, "--port must be between 0 and 65535")
    with errors():
        registry = build().metrics_registry()
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        fail(EXIT_BAD_INPUT, f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    bound = server.server_address
    bound_host = bound[0].decode() if isinstance(bound[0], bytes) else str(bound[0])
    bound_port = bound[1]
    where = f"[{bound_host}]" if ":" in bound_host else bound_host
    out.print(f"serving metrics on http://{where}:{bound_port}/metrics", markup=False)
    sys.stdout.flush()
    try:
        while thread.is_alive():
            thread.join(timeout=1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
