"""A picture of one saga: its steps and compensations on one time axis, as an SVG.

Each step is a row. Its execute is a bar from start to completion (green) or failure (red); the
time spent waiting on the provider's action (from the action's own timestamps) is drawn hatched
inside it; its undo is a second bar (orange when it succeeded, dark red when it did not). Built
from ledger rows only, so it can be drawn for any saga, finished or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

from sagas.models import SagaRun, StepResult, StepStatus

COLOURS = {
    "completed": "#2e9d5b",
    "failed": "#d64545",
    "running": "#3b82f6",
    "compensated": "#f0a030",
    "compensating": "#f5c16c",
    "compensation_failed": "#8b1a1a",
    "wait": "#ffffff",
}
ROW, LABEL, WIDTH, TOP = 34, 300, 1100, 64


@dataclass(frozen=True)
class Segment:
    row: int
    start: datetime
    end: datetime
    kind: str  # a COLOURS key
    title: str


def segments(steps: list[StepResult], now: datetime) -> list[Segment]:
    out: list[Segment] = []
    for row, step in enumerate(steps):
        if step.started_at is not None:
            end = step.completed_at or step.failed_at or (step.compensation_started_at or now)
            state = (
                "failed"
                if step.failed_at and not step.completed_at
                else ("completed" if step.completed_at else "running")
            )
            out.append(Segment(row, step.started_at, end, state, f"{step.step_name}: execute {state}"))
            for slot_start, slot_end in _waits(step):
                # The provider's clock counts whole seconds: keep its wait inside our execute bar.
                wait_start, wait_end = max(slot_start, step.started_at), min(slot_end, end)
                if wait_end > wait_start:
                    title = f"{step.step_name}: waiting on the provider"
                    out.append(Segment(row, wait_start, wait_end, "wait", title))
        if step.compensation_started_at is not None:
            undone = step.compensated_at or now
            if step.compensated_at:
                kind = "compensated"
            elif step.status is StepStatus.COMPENSATION_FAILED:
                kind = "compensation_failed"
            else:
                kind = "compensating"
            out.append(
                Segment(row, step.compensation_started_at, undone, kind, f"{step.step_name}: undo {kind}")
            )
    return out


def _waits(step: StepResult) -> list[tuple[datetime, datetime]]:
    return provider_action_times(step.output)


def provider_action_times(output: Mapping[str, Any]) -> list[tuple[datetime, datetime]]:
    """The provider's own start and end of each action a step waited on, from its output: a step
    notes them as ``<slot>_started_at`` / ``<slot>_completed_at`` (``tasks/actions.py``). A pair
    that does not parse as ISO times is left out."""
    waits = []
    for key, value in output.items():
        if key.endswith("_started_at") and isinstance(value, str):
            done = output.get(key.removesuffix("_started_at") + "_completed_at")
            if isinstance(done, str):
                try:
                    waits.append((datetime.fromisoformat(value), datetime.fromisoformat(done)))
                except ValueError:
                    continue
    return waits


def provider_waits(output: Mapping[str, Any]) -> list[float]:
    """Seconds the provider took over each action the step noted (see ``provider_action_times``)."""
    waits = []
    for start, end in provider_action_times(output):
        try:
            waits.append(max(0.0, (end - start).total_seconds()))
        except TypeError:  # one with a time zone, one without: not a pair we can measure
            continue
    return waits


def render_svg(saga: SagaRun, steps: list[StepResult], now: datetime | None = None) -> str:
    now = now or saga.updated_at
    segs = segments(steps, now)
    t0 = min([s.start for s in segs], default=saga.created_at)
    t1 = max([s.end for s in segs], default=now)
    span = max((t1 - t0).total_seconds(), 0.001)
    scale = (WIDTH - LABEL - 20) / span
    height = TOP + ROW * max(len(steps), 1) + 40

    def x(t: datetime) -> float:
        return LABEL + max((t - t0).total_seconds(), 0.0) * scale

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">',
        "<defs><pattern id='wait' width='6' height='6' patternUnits='userSpaceOnUse' "
        "patternTransform='rotate(45)'><rect width='6' height='6' fill='white' fill-opacity='0.35'/>"
        "<line x1='0' y1='0' x2='0' y2='6' stroke='#1f2937' stroke-width='2' stroke-opacity='0.45'/></pattern></defs>",
        f'<rect width="{WIDTH}" height="{height}" fill="#fbfbfd"/>',
        f'<text x="12" y="24" font-size="16" font-weight="bold">{escape(saga.kind)} saga {saga.id}: '
        f"{escape(saga.status.value)}</text>",
        f'<text x="12" y="44" fill="#555">{span:.1f} s from first step to last; hatched: waiting on the provider</text>',
    ]
    for row, step in enumerate(steps):
        y = TOP + row * ROW
        parts.append(
            f'<text x="12" y="{y + 20}">{row}. {escape(step.step_name)} ({escape(step.status.value)})</text>'
        )
        parts.append(
            f'<line x1="{LABEL}" y1="{y + ROW - 2}" x2="{WIDTH - 10}" y2="{y + ROW - 2}" stroke="#e5e7eb"/>'
        )
    for seg in segs:
        y = TOP + seg.row * ROW + 6
        width = max(x(seg.end) - x(seg.start), 2.0)
        fill = "url(#wait)" if seg.kind == "wait" else COLOURS[seg.kind]
        parts.append(
            f'<rect class="{seg.kind}" x="{x(seg.start):.1f}" y="{y}" width="{width:.1f}" height="{ROW - 12}" '
            f'rx="3" fill="{fill}"><title>{escape(seg.title)}: {(seg.end - seg.start).total_seconds():.2f} s</title></rect>'
        )
    axis_y = TOP + ROW * max(len(steps), 1) + 16
    for i in range(6):
        t = span * i / 5
        px = LABEL + t * scale
        parts.append(f'<text x="{px:.0f}" y="{axis_y}" fill="#555" text-anchor="middle">{t:.1f}s</text>')
    legend = ["completed", "failed", "compensated", "compensation_failed"]
    for i, name in enumerate(legend):
        lx = LABEL + i * 170
        parts.append(f'<rect x="{lx}" y="{axis_y + 8}" width="12" height="12" fill="{COLOURS[name]}"/>')
        parts.append(f'<text x="{lx + 18}" y="{axis_y + 19}">{name.replace("_", " ")}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
