"""What became of a saga, in one line a person reads: the CLI's last word, a flow run's state message
and final log line, the artifacts' heading. Built from the ledger only, so every place says the
same thing, and it never says more than the ledger knows.
"""

from __future__ import annotations

from sagas.models import SagaRun, SagaStatus, StepResult, StepStatus


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def approval_line(saga: SagaRun) -> str:
    """Who decided, when, and why; empty when nobody was asked."""
    if saga.approval_decision is None:
        return ""
    when = f"{saga.approval_decided_at:%Y-%m-%d %H:%M:%S %Z}" if saga.approval_decided_at else "?"
    return f"{saga.approval_decision.value} by {saga.approval_by} at {when}: {saga.approval_note}"


def outcome_line(saga: SagaRun, steps: list[StepResult]) -> str:
    """``test saga 1f2e3d4c rolled back: 1 step undone, nothing left (step fail failed: ...)``."""
    line = _outcome(saga, steps)
    decided = approval_line(saga)
    return f"{line}; {decided}" if decided else line


def _outcome(saga: SagaRun, steps: list[StepResult]) -> str:
    # The id's first 8 hex digits: every command takes them, and the outcome still fits where
    # Prefect cuts a state message short (the full id is in the saga's artifact key and logs).
    head = f"{saga.kind} saga {str(saga.id)[:8]}"
    done = [s for s in steps if s.status is StepStatus.COMPLETED]
    skipped = [s for s in steps if s.status is StepStatus.SKIPPED]
    undone = [s for s in steps if s.compensated_at is not None and s.compensation_attempts > 0]
    why = f" ({saga.error})" if saga.error else ""
    if saga.status is SagaStatus.COMPLETED:
        extra = f", {_plural(len(skipped), 'step')} skipped" if skipped else ""
        late = (
            "; a cancel arrived past its point of no return, so it finished forward"
            if saga.cancel_requested
            else ""
        )
        return f"{head} completed: {_plural(len(done), 'step')} done{extra}{late}"
    if saga.status is SagaStatus.ROLLED_BACK:
        return f"{head} rolled back: {_plural(len(undone), 'step')} undone, nothing left{why}"
    if saga.status is SagaStatus.COMPENSATION_FAILED:
        return (
            f"{head} compensation_failed: an undo kept failing{why}; fix the cause, then"
            f" `sagas retry-compensation {saga.id}` (or `sagas resolve {saga.id} --note ...`)"
        )
    if saga.status is SagaStatus.FAILED:
        return (
            f"{head} failed past its point of no return{why}; fix the cause, then"
            f" `sagas resume {saga.id}` finishes it forward"
        )
    if saga.status is SagaStatus.AWAITING_APPROVAL:
        kept = [s.output["snapshot_name"] for s in done if s.output.get("snapshot_name")]
        still = f" ({', '.join(kept)} kept)" if kept else ""
        if saga.approval_decision is not None:
            return f"{head} was {saga.approval_decision.value}: it goes on at its next run"
        until = (
            f" until {saga.approval_deadline_at:%Y-%m-%d %H:%M:%S %Z}" if saga.approval_deadline_at else ""
        )
        return (
            f"{head} awaits approval{until}{still}: `sagas approve {saga.id} --note ...`"
            f" or `sagas reject {saga.id} --note ...`"
        )
    if saga.waiting_for_admission:
        since = f" since {saga.waiting_since:%Y-%m-%d %H:%M:%S %Z}" if saga.waiting_since else ""
        return f"{head} waits to start{since}: {saga.waiting_reason}"
    if saga.status is SagaStatus.RESOLVED:
        return f"{head} was resolved by hand by {saga.resolved_by}: {saga.resolution_note}"
    return f"{head} is {saga.status.value}{why}"
