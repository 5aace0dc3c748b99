"""A step in doubt, and the one rule for what the runner does with it.

A step is *in doubt* when it may have acted and the runner cannot tell from its own side: the
write's response was lost or was a 5xx, the step ran past its deadline, or the process was cut off
mid-step. Its ``lookup`` asks the provider and answers a ``Lookup``: facts, no decision.

The decision is ``settle_pivot``, in this one place (DESIGN, "The point of no return is the pivot's
write, not its completion"):

- a pivot whose ledger row proves no write was ever sent has not started: it may roll back;
- otherwise it is looked up: it happened -> the saga goes forward (the pivot is finished, then the
  steps after it); it provably did not -> the saga may roll back; cannot tell (no lookup, the
  provider cannot answer, the answer is ambiguous) -> ``failed`` with the evidence, for an operator.

A compensatable step in doubt needs no decision: it is compensated, and its undo is written to be
safe when nothing happened (it finds its resource by its idempotency key first).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Found(StrEnum):
    HAPPENED = "happened"
    NOT_HAPPENED = "not_happened"
    UNKNOWN = "unknown"


class Verdict(StrEnum):
    FORWARD = "forward"  # past the point of no return: finish the pivot and go on
    ROLL_BACK = "roll_back"  # provably nothing happened: undo the steps before it
    FOR_AN_OPERATOR = "for_an_operator"  # cannot tell: stop ``failed`` with the evidence


@dataclass(frozen=True)
class Lookup:
    """What the provider says about a step's effect, and how we know."""

    found: Found
    evidence: str

    def record(self, why: str) -> dict[str, str]:
        """The step row's ``in_doubt`` entry: why it was in doubt, what the lookup found, and how."""
        return {"why": why[:500], "found": self.found.value, "evidence": self.evidence[:1000]}


def settle_pivot(*, may_have_written: bool, lookup: Lookup | None) -> Verdict:
    """What to do with a pivot that failed, timed out or was cut off (``lookup`` None: not looked up,
    because nothing could have been sent)."""
    if not may_have_written:
        return Verdict.ROLL_BACK
    if lookup is None or lookup.found is Found.UNKNOWN:
        return Verdict.FOR_AN_OPERATOR
    return Verdict.FORWARD if lookup.found is Found.HAPPENED else Verdict.ROLL_BACK


def proved_not_happened(in_doubt: object) -> bool:
    """Whether a step row's recorded ``in_doubt`` entry proves its effect did not happen."""
    return isinstance(in_doubt, dict) and in_doubt.get("found") == Found.NOT_HAPPENED.value
