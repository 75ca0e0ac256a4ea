-- The simulated issuer's own ledger, kept when the simulator runs with
-- `ledger = "database"`: what it decided for every RRN and whether it holds
-- the shopper's funds, written before it answers, so the record stands
-- whether or not the answer reaches the switch, and survives a restart of
-- the simulator. A chaos run's audit compares it with the switch's tables.
CREATE TABLE issuer_ledger (
    rrn               TEXT PRIMARY KEY,
    stan              TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('held', 'released', 'declined')),
    -- What is (or was, once released) held; 0 for a decline.
    held_minor        BIGINT NOT NULL,
    response_code     TEXT NOT NULL,
    reversal_requests INTEGER NOT NULL DEFAULT 0,
    unflagged_repeats INTEGER NOT NULL DEFAULT 0,
    decided_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at       TIMESTAMPTZ
);
