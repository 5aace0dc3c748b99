"""The DigitalOcean rate budget shared by every process: per token, leases of request slots.

Three tables, keyed by a SHA-256 of the token (never the token):

- ``rate_budgets``: one row per token, locked by every grant so grants are decided one at a
  time; it also holds what the provider's headers said when they ran low (``allowance`` more
  requests until ``allowance_until``; nothing at all until ``paused_until``).
- ``rate_budget_leases``: slots granted to one process (``holder``), counted in the minute window
  until ``minute_until`` and in the hour window until ``hour_until``. Rows past ``hour_until``
  count for nothing and are deleted by the next grant of the token.
- ``rate_budget_waiters``: a process waiting for slots, with its priority (0 = compensation,
  1 = interactive, 2 = scheduled), until ``until`` (renewed while it waits, and kept a moment
  after it is served while it keeps asking). Lower priorities give way to it.

``rate_budget_lease(...)`` settles, grants and queues in one statement (one round trip, one
short transaction on the token's row); ``rate_budget_tighten(...)`` records the provider's word.
Both commit asynchronously: a budget row lost in a server crash costs at most a few requests'
accounting, which the provider's headers then correct; the ledger's own commits stay durable.
``sagas/digitalocean/shared_budget.py`` says why this is safe across machines.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE rate_budgets (
            token_key text PRIMARY KEY CHECK (token_key ~ '^[0-9a-f]{64}$'),
            allowance integer,
            allowance_until timestamptz,
            paused_until timestamptz,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE rate_budget_leases (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            token_key text NOT NULL REFERENCES rate_budgets (token_key) ON DELETE CASCADE,
            holder text NOT NULL,
            priority smallint NOT NULL CHECK (priority BETWEEN 0 AND 2),
            slots integer NOT NULL CHECK (slots >= 0),
            granted_at timestamptz NOT NULL,
            use_by timestamptz NOT NULL,
            minute_until timestamptz NOT NULL,
            hour_until timestamptz NOT NULL
        )
        """
    )
    op.execute(
        "CREATE INDEX rate_budget_leases_live_idx ON rate_budget_leases (token_key, hour_until)"
        " INCLUDE (minute_until, slots)"
    )
    op.execute(
        """
        CREATE TABLE rate_budget_waiters (
            token_key text NOT NULL REFERENCES rate_budgets (token_key) ON DELETE CASCADE,
            holder text NOT NULL,
            priority smallint NOT NULL CHECK (priority BETWEEN 0 AND 2),
            until timestamptz NOT NULL,
            PRIMARY KEY (token_key, holder, priority)
        )
        """
    )
    op.execute(_LEASE_FUNCTION)
    op.execute(_TIGHTEN_FUNCTION)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS rate_budget_tighten(text, integer, double precision, double precision)"
    )
    op.execute(f"DROP FUNCTION IF EXISTS rate_budget_lease({_LEASE_SIGNATURE})")
    op.execute("DROP TABLE IF EXISTS rate_budget_waiters")
    op.execute("DROP TABLE IF EXISTS rate_budget_leases")
    op.execute("DROP TABLE IF EXISTS rate_budgets")


_LEASE_SIGNATURE = (
    "text, text, smallint, integer, integer, integer, double precision, double precision,"
    " double precision, double precision, double precision, bigint[], integer[], double precision[],"
    " integer, integer"
)

_LEASE_FUNCTION = """
CREATE FUNCTION rate_budget_lease(
    p_token text,
    p_holder text,
    p_priority smallint,
    p_want integer,
    p_minute_ceiling integer,
    p_hour_ceiling integer,
    p_minute_seconds double precision,
    p_hour_seconds double precision,
    p_hold_seconds double precision,
    p_wait_seconds double precision,
    p_yield_seconds double precision,
    p_settle_ids bigint[],
    p_settle_used integer[],
    p_settle_age double precision[],
    p_offline_minute integer,
    p_offline_hour integer,
    OUT lease_id bigint,
    OUT granted integer,
    OUT retry_in double precision
)
LANGUAGE plpgsql
SET lock_timeout = '2s'
AS $$
DECLARE
    v_now timestamptz;
    v_minute interval := make_interval(secs => p_minute_seconds);
    v_hour interval := make_interval(secs => p_hour_seconds);
    v_allowance integer;
    v_allowance_until timestamptz;
    v_paused_until timestamptz;
    v_in_minute integer;
    v_in_hour integer;
    v_free integer;
    v_urgent smallint;
    v_at timestamptz;
BEGIN
    -- Losing the last few budget commits in a server crash is harmless (module docstring).
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT b.allowance, b.allowance_until, b.paused_until
        INTO v_allowance, v_allowance_until, v_paused_until
        FROM rate_budgets b WHERE b.token_key = p_token FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO rate_budgets (token_key) VALUES (p_token) ON CONFLICT DO NOTHING;
        SELECT b.allowance, b.allowance_until, b.paused_until
            INTO v_allowance, v_allowance_until, v_paused_until
            FROM rate_budgets b WHERE b.token_key = p_token FOR UPDATE;
    END IF;
    -- Decided on this server's clock, after the lock: the one clock every process shares.
    v_now := clock_timestamp();

    -- Settle: a done lease counts from its last answer (the latest its requests arrived).
    IF cardinality(p_settle_ids) > 0 THEN
        DELETE FROM rate_budget_leases l
            USING unnest(p_settle_ids, p_settle_used) AS s(id, used)
            WHERE l.id = s.id AND l.token_key = p_token AND l.holder = p_holder AND s.used = 0;
        UPDATE rate_budget_leases l
            SET slots = least(l.slots, s.used),
                minute_until = v_now - make_interval(secs => s.age) + v_minute,
                hour_until = v_now - make_interval(secs => s.age) + v_hour
            FROM unnest(p_settle_ids, p_settle_used, p_settle_age) AS s(id, used, age)
            WHERE l.id = s.id AND l.token_key = p_token AND l.holder = p_holder AND s.used > 0;
    END IF;
    -- Requests sent while this store did not answer: counted from now, for a whole window.
    IF p_offline_minute > 0 THEN
        INSERT INTO rate_budget_leases
            (token_key, holder, priority, slots, granted_at, use_by, minute_until, hour_until)
            VALUES (p_token, p_holder, p_priority, p_offline_minute, v_now, v_now, v_now + v_minute, v_now + v_hour);
    END IF;
    IF p_offline_hour > p_offline_minute THEN
        INSERT INTO rate_budget_leases
            (token_key, holder, priority, slots, granted_at, use_by, minute_until, hour_until)
            VALUES (p_token, p_holder, p_priority, p_offline_hour - p_offline_minute, v_now, v_now, v_now,
                    v_now + v_hour);
    END IF;

    DELETE FROM rate_budget_leases l WHERE l.token_key = p_token AND l.hour_until <= v_now;
    DELETE FROM rate_budget_waiters w WHERE w.token_key = p_token AND w.until <= v_now - v_minute;
    SELECT coalesce(sum(l.slots) FILTER (WHERE l.minute_until > v_now), 0), coalesce(sum(l.slots), 0)
        INTO v_in_minute, v_in_hour
        FROM rate_budget_leases l WHERE l.token_key = p_token AND l.hour_until > v_now;
    SELECT min(w.priority) INTO v_urgent
        FROM rate_budget_waiters w
        WHERE w.token_key = p_token AND w.holder <> p_holder AND w.until > v_now;

    v_free := least(p_minute_ceiling - v_in_minute, p_hour_ceiling - v_in_hour);
    IF v_allowance_until > v_now THEN
        v_free := least(v_free, v_allowance);
    END IF;
    IF v_paused_until > v_now OR (v_urgent IS NOT NULL AND v_urgent < p_priority) THEN
        v_free := 0;
    END IF;
    granted := greatest(0, least(p_want, v_free));
    retry_in := 0;

    IF granted > 0 THEN
        INSERT INTO rate_budget_leases
            (token_key, holder, priority, slots, granted_at, use_by, minute_until, hour_until)
            VALUES (p_token, p_holder, p_priority, granted, v_now,
                    v_now + make_interval(secs => p_hold_seconds),
                    v_now + make_interval(secs => p_hold_seconds) + v_minute,
                    v_now + make_interval(secs => p_hold_seconds) + v_hour)
            RETURNING id INTO lease_id;
        v_in_minute := v_in_minute + granted;
        v_in_hour := v_in_hour + granted;
        IF v_allowance_until > v_now THEN
            UPDATE rate_budgets SET allowance = allowance - granted WHERE token_key = p_token;
            v_allowance := v_allowance - granted;
        END IF;
    END IF;

    IF granted = p_want THEN
        -- Served in full. The caller stays in the queue a moment longer (p_yield_seconds): a
        -- busy process asks again within milliseconds, and lower priorities must not slip in
        -- between its requests.
        INSERT INTO rate_budget_waiters (token_key, holder, priority, until)
            VALUES (p_token, p_holder, p_priority, v_now + make_interval(secs => p_yield_seconds))
            ON CONFLICT (token_key, holder, priority) DO UPDATE SET until = excluded.until;
        RETURN;
    END IF;

    -- Fewer than asked: queue for the rest, and say when asking again makes sense.
    INSERT INTO rate_budget_waiters (token_key, holder, priority, until)
        VALUES (p_token, p_holder, p_priority, v_now + make_interval(secs => p_wait_seconds))
        ON CONFLICT (token_key, holder, priority) DO UPDATE SET until = excluded.until;
    IF v_urgent IS NOT NULL AND v_urgent < p_priority THEN
        retry_in := p_yield_seconds;
    END IF;
    IF v_paused_until > v_now THEN
        retry_in := greatest(retry_in, extract(epoch FROM v_paused_until - v_now));
    END IF;
    IF v_allowance_until > v_now AND v_allowance <= 0 THEN
        retry_in := greatest(retry_in, extract(epoch FROM v_allowance_until - v_now));
    END IF;
    IF v_in_minute >= p_minute_ceiling THEN
        -- The moment enough of the minute window has expired for one more request.
        SELECT e.minute_until INTO v_at FROM (
            SELECT l.minute_until, sum(l.slots) OVER (ORDER BY l.minute_until, l.id) AS freed
                FROM rate_budget_leases l
                WHERE l.token_key = p_token AND l.minute_until > v_now AND l.slots > 0
        ) e WHERE e.freed >= v_in_minute - p_minute_ceiling + 1 ORDER BY e.minute_until LIMIT 1;
        retry_in := greatest(retry_in, coalesce(extract(epoch FROM v_at - v_now), p_yield_seconds));
    END IF;
    IF v_in_hour >= p_hour_ceiling THEN
        SELECT e.hour_until INTO v_at FROM (
            SELECT l.hour_until, sum(l.slots) OVER (ORDER BY l.hour_until, l.id) AS freed
                FROM rate_budget_leases l
                WHERE l.token_key = p_token AND l.hour_until > v_now AND l.slots > 0
        ) e WHERE e.freed >= v_in_hour - p_hour_ceiling + 1 ORDER BY e.hour_until LIMIT 1;
        retry_in := greatest(retry_in, coalesce(extract(epoch FROM v_at - v_now), p_yield_seconds));
    END IF;
END
$$
"""

_TIGHTEN_FUNCTION = """
CREATE FUNCTION rate_budget_tighten(
    p_token text,
    p_remaining integer,
    p_reset_in double precision,
    p_pause double precision
) RETURNS void
LANGUAGE plpgsql
SET lock_timeout = '2s'
AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO rate_budgets (token_key) VALUES (p_token) ON CONFLICT DO NOTHING;
    IF p_pause IS NOT NULL THEN
        -- A burst 429: nobody sends until it lapses (never shortened by a later answer).
        UPDATE rate_budgets
            SET paused_until = greatest(coalesce(paused_until, v_now), v_now + make_interval(secs => p_pause))
            WHERE token_key = p_token;
    ELSIF p_remaining IS NOT NULL THEN
        -- The provider's latest count of what is left replaces the last one.
        UPDATE rate_budgets
            SET allowance = greatest(0, p_remaining),
                allowance_until = v_now + make_interval(secs => coalesce(p_reset_in, 60))
            WHERE token_key = p_token;
    END IF;
END
$$
"""
