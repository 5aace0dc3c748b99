"""How the ``sagas`` command shows sagas, steps and orphans: Rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.table import Column, Table
from rich.text import Text

from app.cli.common import out
from sagas.models import SagaRun, SagaStatus, StepResult, StepStatus

if TYPE_CHECKING:
    from sagas.operator.orphans import Orphan

STYLES = {
    "completed": "green",
    "rolled_back": "yellow",
    "compensated": "yellow",
    "resolved": "cyan",
    "compensation_failed": "bold red",
    "failed": "bold red",
    "compensating": "magenta",
    "running": "blue",
    "pending": "dim",
    "pending (waiting)": "yellow",
    "awaiting_approval": "bold yellow",
    "skipped": "dim",
}


def table(*headers: str, whole: tuple[str, ...] = ()) -> Table:
    """A table that folds long cells instead of cutting them; ``whole`` columns are never broken."""
    columns = [
        Column(h, no_wrap=h in whole, min_width=36 if h in whole else None, overflow="fold") for h in headers
    ]
    return Table(*columns)


def status(value: str) -> Text:
    return Text(value, style=STYLES.get(value, ""))


def when(moment: datetime | None) -> str:
    return "" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def took(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def saga_json(saga: SagaRun) -> dict[str, Any]:
    return saga.model_dump(mode="json", exclude={"lease_owner"})


def resource_ids(step: StepResult) -> dict[str, Any]:
    """What the step made or acted on at the provider, as its output recorded it."""
    return {k: v for k, v in sorted(step.output.items()) if k.endswith("_id") and v not in (None, "")}


def step_json(step: StepResult) -> dict[str, Any]:
    data = step.model_dump(mode="json", exclude={"saga_id"})
    data["name"] = data.pop("step_name")
    data["resource_ids"] = resource_ids(step)
    return data


def print_saga(saga: SagaRun, steps: list[StepResult], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({**saga_json(saga), "steps": [step_json(s) for s in steps]}))
        return
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("saga", Text(str(saga.id)))
    head.add_row("kind", Text(f"{saga.kind} v{saga.definition_version} ({', '.join(saga.step_names)})"))
    head.add_row("status", status(saga.status.value))
    head.add_row("inputs", Text(json.dumps(saga.inputs, sort_keys=True)))
    if saga.resource:
        head.add_row("resource", Text(saga.resource))
    head.add_row("triggered by", Text(saga.triggered_by))
    head.add_row("prefect flow run", Text(str(saga.flow_run_id) if saga.flow_run_id else "(none)"))
    head.add_row(
        "timings",
        Text(
            f"created {when(saga.created_at)}, started {when(saga.started_at) or '-'},"
            f" finished {when(saga.finished_at) or '-'}"
            + (f" ({took(saga.started_at, saga.finished_at)})" if saga.finished_at else "")
        ),
    )
    if saga.lease_expires_at is not None and saga.lease_owner is not None:
        head.add_row("held", Text(f"by a runner, lease until {when(saga.lease_expires_at)}"))
    if saga.queue:
        queued = f" by flow run {saga.queued_by}" if saga.queued_by else ""
        head.add_row(
            "queue", Text(f"{saga.queue} (run by `sagas worker --queue {saga.queue}`; queued{queued})")
        )
    if saga.waiting_for_admission:
        head.add_row(
            "waiting",
            Text(f"to start, since {when(saga.waiting_since)}: {saga.waiting_reason}", style="yellow"),
        )
    elif saga.destructive and saga.admitted_at is not None:
        waited = f" after waiting since {when(saga.waiting_since)}" if saga.waiting_since else ""
        head.add_row("destructive", Text(f"admitted under the caps at {when(saga.admitted_at)}{waited}"))
    if saga.cancel_requested:
        head.add_row("cancel", Text("requested"))
    if saga.error:
        head.add_row("error", Text(saga.error, style="red"))
    if saga.approval_requested_at is not None:
        asked = f"asked {when(saga.approval_requested_at)}, answer due by {when(saga.approval_deadline_at)}"
        head.add_row("approval", Text(asked))
    if saga.approval_decision is not None:
        head.add_row(
            saga.approval_decision.value,
            Text(f"by {saga.approval_by} at {when(saga.approval_decided_at)}: {saga.approval_note}"),
        )
    if saga.status is SagaStatus.RESOLVED:
        head.add_row("resolved", Text(f"by {saga.resolved_by} at {when(saga.resolved_at)}"))
        head.add_row("note", Text(saga.resolution_note or ""))
    out.print(head)
    # The step's name and its idempotency key share a column that is never broken: the key is
    # what an operator searches the provider for. Errors go below the table, whole.
    ids = max([len(f"{k}={v}") for s in steps for k, v in resource_ids(s).items()] + [9])
    grid = Table(
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
            ran = took(s.started_at, s.completed_at)
            timings.append(f"ran {s.started_at:%H:%M:%S}" + (f" {ran}" if ran else ""))
        if s.compensated_at:
            timings.append(f"undone {s.compensated_at:%H:%M:%S}")
        elif s.compensation_started_at:
            timings.append(f"undo {s.compensation_started_at:%H:%M:%S}")
        # A skipped step never touched the provider: why it had nothing to do, not a name to search.
        second = (
            f"(skipped: {s.output.get('skipped') or 'nothing to do'})"
            if s.status is StepStatus.SKIPPED
            else s.idempotency_key or "-"
        )
        grid.add_row(
            str(s.step_idx),
            Text(f"{s.step_name}\n{second}"),
            status(s.status.value),
            Text("\n".join(f"{k}={v}" for k, v in resource_ids(s).items())),
            f"{s.attempts}/{s.compensation_attempts}" if s.compensation_attempts else str(s.attempts),
            Text("\n".join(timings)),
        )
        if s.error:
            errors.append(Text.assemble(f"step {s.step_idx} {s.step_name}: ", (s.error, "red")))
    recorded = {s.step_name for s in steps}
    for idx, name in enumerate(saga.step_names):
        if name not in recorded:
            grid.add_row(str(idx), Text(f"{name}\n(not started)"), status("pending"), "", "0/0", "")
    out.print(grid)
    out.print("tries: runs/undos; times are the step's (dates in the saga's timings)", style="dim")
    for line in errors:
        out.print(line)


def orphan_json(orphan: Orphan) -> dict[str, Any]:
    return {**orphan.model_dump(mode="json"), "target": orphan.target}


def print_orphans(found: list[Orphan]) -> None:
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
