"""``sagas worker``: a long-lived process that runs the sagas of one queue (``sagas.worker``).

Start as many as the rate limit needs, on as many machines as you like, all pointed at the same
ledger (``SAGAS_DATABASE_URL``) and token: they share the queue and the rate budget through it.
SIGTERM (or Ctrl-C) stops it gracefully: no new saga, ``--grace`` seconds for the sagas in hand,
then exit (whatever still runs is freed by its lease for another worker). A second signal exits at
once. One line per saga that ends goes to stdout.
"""

from __future__ import annotations

import os
import signal
import socket
from types import FrameType
from typing import Annotated

import typer

from app.cli.common import build, err, errors, out
from sagas.models import SagaRun


def worker(
    queue: Annotated[str, typer.Option(help="The queue whose sagas this worker runs, e.g. fleet.")],
    concurrency: Annotated[
        int, typer.Option(min=1, max=500, help="Sagas run at once (threads; they wait on the provider).")
    ] = 16,
    poll: Annotated[
        float, typer.Option(min=0.05, max=60.0, help="Seconds between looks at a queue that had nothing.")
    ] = 1.0,
    grace: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="On SIGTERM or Ctrl-C: seconds the sagas in hand get to end before the worker exits"
            " (the rest are left to their leases, for another worker).",
        ),
    ] = 20.0,
) -> None:
    """Run the sagas of a queue (the fleet's: --queue fleet), many at once, until stopped."""
    from sagas.context import parse_queue_name
    from sagas.worker import QueueWorker

    with errors():
        name = parse_queue_name(queue)
        application = build()

        def settled(saga: SagaRun) -> None:
            out.print(
                f"{saga.kind} saga {saga.id} {saga.status.value} ({saga.resource or '-'})", markup=False
            )

        running = QueueWorker(
            application.ledger,
            application.runner,
            queue=name,
            concurrency=concurrency,
            poll_seconds=poll,
            on_settled=settled,
        )
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def stop(signum: int, frame: FrameType | None) -> None:
            if running.stopping:
                raise SystemExit(128 + signum)  # a second signal: at once; leases free the rest
            err.print(
                f"stopping: no new saga; {running.in_hand} in hand get up to {grace:.0f}s to end",
                markup=False,
            )
            running.stop()

        for sig in previous:
            signal.signal(sig, stop)
        out.print(
            f"worker {socket.gethostname()}:{os.getpid()} runs queue {name}, {concurrency} sagas at a time",
            markup=False,
        )
        try:
            report = running.run(grace=grace)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        settled_counts = ", ".join(f"{n} {status}" for status, n in sorted(report.settled.items())) or "none"
        out.print(
            f"worker stopped: {report.ran} sagas ended ({settled_counts}); {report.busy} busy elsewhere,"
            f" {report.waiting} waiting for a place, {report.errors} stopped with an error,"
            f" {report.left_running} left running for their leases",
            markup=False,
        )
