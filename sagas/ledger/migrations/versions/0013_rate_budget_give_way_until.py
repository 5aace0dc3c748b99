"""The rate budget's lease function: a process giving way asks again when the more urgent lapse.

``rate_budget_lease(...)`` (migration 0010) told a process that gave way to a more urgent one to
ask again after ``p_yield_seconds``, the same parameter that says how long a caller served in full
stays registered. The two now part: a caller that gives way is told to ask again when the
registrations it gives way to run out (the latest of them; its client asks sooner if its own poll
says so), and ``p_yield_seconds`` is only how long a caller served in full stays registered. That
lets a client keep its place for longer once served after it had to wait
(``sagas/digitalocean/shared_budget.py``) without the processes below it polling less often.

Same signature, same tables; only the function body changes (``CREATE OR REPLACE``). The
downgrade restores 0010's function.

Revision ID: 0013
Revises: 0012
"""

import importlib

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_V0010 = importlib.import_module("sagas.ledger.migrations.versions.0010_rate_budget")

_GAVE_WAY_0010 = """
    IF v_urgent IS NOT NULL AND v_urgent < p_priority THEN
        retry_in := p_yield_seconds;
    END IF;
"""
_GAVE_WAY = """
    IF v_urgent IS NOT NULL AND v_urgent < p_priority THEN
        -- Nothing for this caller before the more urgent processes' places lapse (or are renewed).
        SELECT extract(epoch FROM max(w.until) - v_now) INTO retry_in
            FROM rate_budget_waiters w
            WHERE w.token_key = p_token AND w.holder <> p_holder AND w.priority < p_priority
                AND w.until > v_now;
    END IF;
"""
_SERVED_0010 = """
        -- Served in full. The caller stays in the queue a moment longer (p_yield_seconds): a
        -- busy process asks again within milliseconds, and lower priorities must not slip in
        -- between its requests.
"""
_SERVED = """
        -- Served in full. The caller stays in the queue p_yield_seconds longer (its client says
        -- how long: a moment, or as long as a waiting process's place when it had to wait
        -- lately), so that lower priorities do not slip in between its requests.
"""


def _replacing(function: str) -> str:
    assert function.count("\nCREATE FUNCTION rate_budget_lease(") == 1
    return function.replace(
        "\nCREATE FUNCTION rate_budget_lease(", "\nCREATE OR REPLACE FUNCTION rate_budget_lease("
    )


def upgrade() -> None:
    function: str = _V0010._LEASE_FUNCTION
    for old in (_GAVE_WAY_0010, _SERVED_0010):
        assert function.count(old) == 1, "0010's function is not the one this migration edits"
    op.execute(_replacing(function.replace(_GAVE_WAY_0010, _GAVE_WAY).replace(_SERVED_0010, _SERVED)))


def downgrade() -> None:
    op.execute(_replacing(_V0010._LEASE_FUNCTION))
