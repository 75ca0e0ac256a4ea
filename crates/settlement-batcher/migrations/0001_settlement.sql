-- The settlement batcher's record of approvals, derived from
-- authorization's events (authorization stays the single writer of
-- authorization state; this is the view settlement needs), terminal
-- batches, and merchant settlement windows with their payouts.

-- Windows first: transactions point at the window that paid them.
--
-- A merchant's open window is implicit: its approvals not yet assigned to
-- a window. A row is written when the window closes at its cut-off
-- ('closed': payouts computed) and updated when its payout files are
-- written ('settled').
CREATE TABLE windows (
    window_id        UUID PRIMARY KEY,
    merchant_id      TEXT NOT NULL,
    sequence         BIGINT NOT NULL,
    run_id           UUID NOT NULL,
    cutoff_at        TIMESTAMPTZ NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('closed', 'settled')),
    fee_basis_points INTEGER NOT NULL,
    held_count       BIGINT NOT NULL DEFAULT 0,
    closed_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    settled_at       TIMESTAMPTZ,
    payout_file      TEXT,
    UNIQUE (merchant_id, sequence)
);
CREATE INDEX windows_by_run ON windows (run_id);
CREATE INDEX windows_unsettled ON windows (closed_at) WHERE state = 'closed';

-- One payout per window and currency.
CREATE TABLE payouts (
    window_id         UUID NOT NULL REFERENCES windows (window_id),
    currency          TEXT NOT NULL,
    transaction_count BIGINT NOT NULL,
    gross_minor_units BIGINT NOT NULL,
    fee_minor_units   BIGINT NOT NULL,
    net_minor_units   BIGINT NOT NULL,
    reference         TEXT NOT NULL UNIQUE,
    PRIMARY KEY (window_id, currency),
    CHECK (net_minor_units = gross_minor_units - fee_minor_units)
);

-- Every approval. `status` only moves forward (see store.rs): events and
-- the upload's catch-up lookups may arrive in any order.
CREATE TABLE transactions (
    transaction_id  UUID PRIMARY KEY,
    terminal_id     TEXT NOT NULL,
    merchant_id     TEXT NOT NULL,
    stan            TEXT NOT NULL,
    local_date      DATE NOT NULL,
    rrn             TEXT NOT NULL,
    masked_pan      TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    currency        TEXT NOT NULL,
    channel         TEXT NOT NULL DEFAULT 'card',
    approval_code   TEXT,
    approved_at     TIMESTAMPTZ NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('unconfirmed', 'confirmed', 'reversal_pending', 'reversed')),
    evidence        TEXT,
    reversal_reason TEXT,
    -- Set by reconciliation (or an acknowledgement after a reversal): a
    -- receipt exists for a payment the host undid or knows otherwise.
    -- Never settled.
    conflict        TEXT,
    conflict_detail TEXT,
    -- The terminal batch it was closed in; NULL while in the open batch.
    batch_number    TEXT,
    -- The window that paid it; NULL until then.
    window_id       UUID REFERENCES windows (window_id),
    -- Why it was held at the last cut-off it missed.
    hold_reason     TEXT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (window_id IS NULL OR (status = 'confirmed' AND conflict IS NULL))
);
CREATE UNIQUE INDEX transactions_by_terminal_key ON transactions (terminal_id, local_date, stan);
CREATE INDEX transactions_open_batch ON transactions (terminal_id) WHERE batch_number IS NULL;
CREATE INDEX transactions_in_batch ON transactions (terminal_id, batch_number) WHERE batch_number IS NOT NULL;
-- Reversed approvals are never paid and never looked at again by a run.
CREATE INDEX transactions_unsettled ON transactions (merchant_id, approved_at)
    WHERE window_id IS NULL AND status <> 'reversed';
CREATE INDEX transactions_by_rrn ON transactions (rrn);
CREATE INDEX transactions_by_merchant_day ON transactions (merchant_id, approved_at);

-- Terminal batches: the close (and the upload that followed it) with the
-- answers given, so a repeat is answered the same.
CREATE TABLE batches (
    terminal_id      TEXT NOT NULL,
    batch_number     TEXT NOT NULL,
    merchant_id      TEXT NOT NULL,
    result           TEXT NOT NULL CHECK (result IN ('balanced', 'out_of_balance', 'reconciled')),
    close_digest     TEXT NOT NULL,
    -- Currencies of the terminal's totals: an upload in another is refused.
    currencies       TEXT[] NOT NULL,
    close_response   BYTEA NOT NULL,
    upload_digest    TEXT,
    upload_response  BYTEA,
    closed_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    reconciled_at    TIMESTAMPTZ,
    PRIMARY KEY (terminal_id, batch_number)
);

CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    event_id     UUID NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    message_key  TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    traceparent  TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE processed_events (
    consumer     TEXT NOT NULL,
    event_id     UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- How far along an approval is: a status only ever moves to a higher rank,
-- so a stale event or lookup can never undo a later one. Confirmed and
-- reversed are both final.
CREATE FUNCTION status_rank(status TEXT) RETURNS INTEGER
IMMUTABLE LANGUAGE sql AS $$
    SELECT CASE status
        WHEN 'unconfirmed' THEN 1
        WHEN 'reversal_pending' THEN 2
        WHEN 'confirmed' THEN 3
        WHEN 'reversed' THEN 3
    END
$$;
