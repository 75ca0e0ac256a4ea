-- Issue 4: reversals that always finish, confirmations, conflicts, and
-- what arrives too late.
ALTER TABLE authorizations
    ADD COLUMN reversal_reason       TEXT,
    ADD COLUMN confirmation_evidence TEXT,
    -- The terminal acknowledged after the switch had reversed (S2).
    ADD COLUMN conflict_at           TIMESTAMPTZ;

-- The durable reversal queue: one row per authorization owed a reversal,
-- repeated until the issuer acknowledges it or it is dead-lettered. One
-- queue per issuer (the `issuer` column), so a dead issuer only holds up
-- its own reversals.
CREATE TABLE reversals (
    transaction_id   UUID PRIMARY KEY REFERENCES authorizations (transaction_id),
    issuer           TEXT NOT NULL,
    reason           TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'acknowledged', 'dead_lettered')),
    requested_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- Also a lease: a worker that claims a row moves this past the issuer
    -- timeout, so a crashed worker's claim expires by itself.
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    first_sent_at    TIMESTAMPTZ,
    last_error       TEXT,
    acknowledged_at  TIMESTAMPTZ,
    dead_lettered_at TIMESTAMPTZ
);
CREATE INDEX reversals_due ON reversals (issuer, next_attempt_at) WHERE status = 'pending';

-- Terminal reversals for transactions the switch never saw: answered and
-- recorded, not an error.
CREATE TABLE unmatched_reversals (
    terminal_id TEXT NOT NULL,
    stan        TEXT NOT NULL,
    local_date  DATE NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (terminal_id, stan, local_date)
);

-- Issuer answers that arrived after the switch gave up: recorded, never
-- acted on as approvals.
CREATE TABLE late_issuer_responses (
    id             BIGSERIAL PRIMARY KEY,
    transaction_id UUID NOT NULL REFERENCES authorizations (transaction_id),
    response_code  TEXT NOT NULL,
    approval_code  TEXT NOT NULL,
    latency_ms     INTEGER NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
