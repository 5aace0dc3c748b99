"""The recovery sweep: finish every saga whose runner died (scheduled every minute).

See ``sagas.recovery`` for why running it twice, or next to live runners, is safe.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from prefect import flow
from pydantic import Field, Strict

from app.wiring import build_app
from flows.visibility import publish
from sagas.recovery import sweep


@flow(name="recovery-sweep", log_prints=False)
def recovery_sweep(
    limit: Annotated[
        int, Strict(), Field(ge=1, le=10_000, json_schema_extra={"title": "Sagas a sweep"})
    ] = 100,
) -> dict[str, Any]:
    """Resume or roll back sagas whose lease expired (at most ``limit`` a sweep); publish their ledgers.

    Args:
        limit: The most sagas one sweep finishes (1-10000); the next sweep takes the rest.
    """
    from tasks.prefect_steps import invoke_as_task

    app = build_app()
    report = sweep(
        app.ledger,
        lambda: app.runner(invoke_as_task),
        pending_grace_seconds=app.settings.recovery_pending_grace_seconds,
        limit=limit,
        on_done=lambda saga: publish(app.ledger, saga),
    )
    return asdict(report)
