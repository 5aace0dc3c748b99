"""Commands for people who look: ``list``, ``show``, ``plan``. None of them writes anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from app.cli.common import (
    EXIT_BAD_INPUT,
    build,
    err,
    errors,
    fail,
    find_id,
    out,
    parse_inputs,
    parse_steps,
    read_id,
    say_which_ledger,
)
from app.cli.render import print_saga, saga_json, status, table


def list_sagas(
    status_: Annotated[str | None, typer.Option("--status", help="Only sagas in this status.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only sagas of this kind.")] = None,
    deployment: Annotated[str | None, typer.Option(help="Only sagas for this deployment id.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List sagas, newest first."""
    with errors():
        application = build()
        say_which_ledger(application)
        sagas = application.provisioning().list_sagas(
            status=status_, kind=kind, deployment_id=deployment, limit=limit
        )
        if as_json:
            out.print_json(json.dumps([saga_json(s) for s in sagas]))
            return
        grid = table("id", "kind", "status", "resource", "created", "error", whole=("id",))
        for s in sagas:
            grid.add_row(
                Text(str(s.id)),
                Text(s.kind),
                status("pending (waiting)" if s.waiting_for_admission else s.status.value),
                Text(s.resource or ""),
                f"{s.created_at:%m-%d %H:%M}",
                Text((s.error or s.waiting_reason or "")[:60]),
            )
        out.print(grid)
        if not sagas:
            err.print("no sagas match", markup=False)


def show(
    saga_id: Annotated[str, typer.Argument(help="The saga to show (its id, or 8+ hex digits of it).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    timeline: Annotated[
        bool, typer.Option("--timeline", help="Write the saga's timeline as an SVG file and print its path.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option(help="Where --timeline writes (default: ./saga-<id>.svg).")
    ] = None,
) -> None:
    """Show a saga and every step: status, idempotency key, resource ids, attempts, errors, timings."""
    with errors():
        given = read_id(saga_id)
        application = build()
        say_which_ledger(application)
        provisioning = application.provisioning()
        saga = provisioning.get_saga(find_id(application, given))
        steps = provisioning.list_step_results(saga.id)
        if timeline:
            from sagas.timeline import render_svg

            path = output or Path(f"saga-{saga.id}.svg")
            try:
                path.write_text(render_svg(saga, steps))
            except OSError as exc:
                fail(EXIT_BAD_INPUT, f"cannot write the timeline to {path}: {exc.strerror}")
            out.print(str(path.resolve()), markup=False)
            return
        print_saga(saga, steps, as_json)


def plan(
    kind: Annotated[str, typer.Argument(help="Saga kind, e.g. snapshot or test.")],
    inputs: Annotated[
        str, typer.Option(help="Inputs as a JSON object, e.g. '{\"droplet_id\": 123}'.")
    ] = "{}",
    steps: Annotated[str | None, typer.Option(help="For the test kind: step names, comma-separated.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Dry run: the steps a saga would run, the names they would use, and how each is undone.

    Touches neither the provider nor the ledger.
    """
    from sagas.operator.plan import plan_saga
    from sagas.settings import load_settings
    from tasks.registry import catalog

    with errors():
        parsed = parse_inputs(inputs)
        planned = plan_saga(
            catalog(), kind, parsed, steps=parse_steps(steps), prefix=load_settings().name_prefix
        )
        if as_json:
            out.print_json(planned.model_dump_json())
            return
        out.print(
            f"plan for {article(planned.kind)} {planned.kind} saga (v{planned.definition_version}) with inputs"
            f" {json.dumps(planned.inputs, sort_keys=True)}",
            markup=False,
        )
        out.print(
            f"placeholder saga id {planned.placeholder_saga_id}: a real run gets its own id, so the"
            " names below end differently",
            markup=False,
        )
        if planned.resource:
            out.print(
                f"holds {planned.resource} while it runs (one unfinished saga per resource)", markup=False
            )
        # One block per step rather than a table: names must survive any terminal width whole.
        for step in planned.steps:
            out.print()
            line = Text(f"{step.index}  {step.name}  ")
            if step.skipped is not None:
                line.append("skipped", style="dim")
                out.print(line)
                out.print(Text(f"   why:  {step.skipped}: nothing to do, nothing to undo"))
                continue
            line.append(
                step.reversibility.value, style="bold red" if step.reversibility == "pivot" else "bold"
            )
            out.print(line)
            out.print(Text(f"   name: {step.idempotency_key}"))
            out.print(Text(f"   does: {step.does}"))
            out.print(Text(f"   undo: {step.compensation}"))
        out.print()
        out.print("nothing was written: not to the provider, not to the ledger", markup=False)


def article(word: str) -> str:
    """'a' or 'an', by the sound the word starts with (every kind name starts as it is spelled)."""
    return "an" if word[:1].lower() in "aeiou" else "a"
