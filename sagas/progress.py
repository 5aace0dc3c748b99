"""Live progress of one saga in the terminal, read from the ledger while a runner moves it.

On a terminal it redraws a Rich table (step, status, what it waits on, elapsed); anywhere else (CI
logs, ``--json``, a pipe) it prints one plain line per change. It only reads the ledger, so it
shows the same thing whichever process runs the saga.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

from sagas.errors import SagaError
from sagas.ledger.store import Ledger
from sagas.models import SagaRun, StepResult, StepStatus

STYLES = {
    "completed": "green",
    "failed": "red",
    "running": "cyan",
    "compensating": "yellow",
    "compensated": "dark_orange",
    "compensation_failed": "bold red",
}


def describe_step(step: StepResult, now: datetime) -> str:
    """What the step is doing, in words: 'polling action 123 for 4.2s', 'compensating'."""
    if step.status is StepStatus.RUNNING:
        elapsed = (now - step.started_at).total_seconds() if step.started_at else 0.0
        waiting = [f"action {v}" for k, v in step.output.items() if k.endswith("_id") and "action" in k]
        if waiting:
            return f"polling {waiting[-1]} for {elapsed:.1f}s"
        return f"running for {elapsed:.1f}s"
    if step.status is StepStatus.COMPENSATING:
        return f"compensating (attempt {step.compensation_attempts})"
    if step.status is StepStatus.FAILED and step.compensated_at:
        return "failed, undone"
    return step.status.value


class SagaProgress:
    """A context manager that shows a saga's steps move until it exits."""

    def __init__(
        self, ledger: Ledger, saga_id: uuid.UUID, console: Console, *, live: bool, interval: float = 0.5
    ) -> None:
        self._ledger = ledger
        self._saga_id = saga_id
        self._console = console
        self._live = live
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-{saga_id}", daemon=True)
        self._printed: dict[str, str] = {}

    def __enter__(self) -> SagaProgress:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _snapshot(self) -> tuple[SagaRun, list[StepResult]] | None:
        try:
            return self._ledger.get_saga(self._saga_id), self._ledger.list_step_results(self._saga_id)
        except SagaError:
            return None  # not recorded yet, or the ledger blinked: try at the next tick

    def _run(self) -> None:
        if self._live:
            with Live(console=self._console, refresh_per_second=4, transient=False) as live:
                while True:
                    state = self._snapshot()
                    if state is not None:
                        live.update(self.table(*state))
                    if self._stop.wait(self._interval):
                        break
                state = self._snapshot()
                if state is not None:
                    live.update(self.table(*state))
            return
        while True:
            self._print_changes()
            if self._stop.wait(self._interval):
                break
        self._print_changes()

    def table(self, saga: SagaRun, steps: list[StepResult]) -> Table:
        now = datetime.now(UTC)
        table = Table(title=f"{saga.kind} saga {saga.id}: {saga.status.value}", title_justify="left")
        for column in ("#", "step", "status", "doing"):
            table.add_column(column)
        recorded = {s.step_idx: s for s in steps}
        for idx, name in enumerate(saga.step_names):
            step = recorded.get(idx)
            status = step.status.value if step else "pending"
            table.add_row(
                str(idx),
                name,
                f"[{STYLES.get(status, 'white')}]{status}[/]",
                describe_step(step, now) if step else "",
            )
        return table

    def _print_changes(self) -> None:
        state = self._snapshot()
        if state is None:
            return
        saga, steps = state
        now = datetime.now(UTC)
        lines = {"saga": f"saga {saga.id} ({saga.kind}): {saga.status.value}"}
        for step in steps:
            doing = describe_step(step, now)
            # Elapsed time changes every tick; a new line is for a new state, not a new second.
            stable = doing.split(" for ")[0]
            lines[f"step{step.step_idx}"] = f"  {step.step_idx}. {step.step_name}: {stable}"
        for key, line in lines.items():
            if self._printed.get(key) != line:
                self._printed[key] = line
                self._console.print(line, markup=False, highlight=False)
