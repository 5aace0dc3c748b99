"""Machinery shared by the reliability tests and ``scripts/reliability``, one scenario per module.

- ``world``: the simulator seen from a test, the ledger side, and the judging of a world
  (verdicts: survived, leaked, doubled);
- ``crash``: the crash matrix (a runner SIGKILLed at every point of every step);
- ``scenarios``: the sagas the cancel and fault matrices run, and the outcomes each may end in;
- ``cancel``: the cancel matrix (a cancel while each step waits on the provider);
- ``fault_matrix``: the fault matrix (each provider call of each step answered once with a fault);
- ``storm``: many sagas under a seeded storm of faults;
- ``racing``: several runners on each saga;
- ``db_faults``: the ledger's connections killed mid-saga.

The names callers use are gathered here.
"""

from tests.reliability.harness.cancel import CancelCase, cancel_cases, run_cancel_case
from tests.reliability.harness.crash import POINTS, CrashCase, crash_cases, run_crash_case
from tests.reliability.harness.db_faults import database_faults, kill_ledger_connections, ledger_blips
from tests.reliability.harness.fault_matrix import (
    FAULTS,
    FaultCase,
    ProviderCall,
    fault_cases,
    run_fault_case,
)
from tests.reliability.harness.racing import racing_runners
from tests.reliability.harness.scenarios import Scenario, held_line, scenarios
from tests.reliability.harness.storm import fault_storm
from tests.reliability.harness.world import (
    FIXED_KINDS,
    STEP_WRITES,
    CaseResult,
    Sim,
    Verdict,
    advance_until_terminal,
    judge,
    run_cases_in_parallel,
    simulators,
    summary_line,
    truncate,
)

__all__ = [
    "FAULTS",
    "FIXED_KINDS",
    "POINTS",
    "STEP_WRITES",
    "CancelCase",
    "CaseResult",
    "CrashCase",
    "FaultCase",
    "ProviderCall",
    "Scenario",
    "Sim",
    "Verdict",
    "advance_until_terminal",
    "cancel_cases",
    "crash_cases",
    "database_faults",
    "fault_cases",
    "fault_storm",
    "held_line",
    "judge",
    "kill_ledger_connections",
    "ledger_blips",
    "racing_runners",
    "run_cancel_case",
    "run_cases_in_parallel",
    "run_crash_case",
    "run_fault_case",
    "scenarios",
    "simulators",
    "summary_line",
    "truncate",
]
