-- Issue 15 (ADR 29): QR payments, journaled like card sales. One row per
-- payment holds switch_core::qr::QrPayment; the shopper's payment code is
-- never stored (a bearer credential, sent once with the pay call).
CREATE TABLE qr_payments (
    transaction_id        UUID PRIMARY KEY,
    terminal_id           TEXT NOT NULL,
    stan                  TEXT NOT NULL,
    local_date            DATE NOT NULL,
    merchant_id           TEXT NOT NULL,
    mode                  TEXT NOT NULL CHECK (mode IN ('consumer_presented', 'merchant_presented')),
    order_id              TEXT NOT NULL UNIQUE,
    amount_minor          BIGINT NOT NULL CHECK (amount_minor > 0),
    currency              TEXT NOT NULL,
    orphan_policy         TEXT NOT NULL,
    state                 TEXT NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL,
    terminal_deadline     TIMESTAMPTZ NOT NULL,
    query_limit_at        TIMESTAMPTZ NOT NULL,
    -- The query schedule: due when it is not after the worker's `now`.
    next_query_at         TIMESTAMPTZ,
    queries               INTEGER NOT NULL DEFAULT 0,
    code                  TEXT,
    platform_txn_id       TEXT,
    paid_at               TIMESTAMPTZ,
    acknowledged_at       TIMESTAMPTZ,
    terminal_gave_up      BOOLEAN NOT NULL DEFAULT false,
    confirmation_evidence TEXT,
    owed_kind             TEXT,
    owed_request_id       TEXT,
    owed_since            TIMESTAMPTZ,
    refund_reason         TEXT,
    failure               TEXT,
    conflict_at           TIMESTAMPTZ,
    updated_at            TIMESTAMPTZ NOT NULL,
    UNIQUE (terminal_id, stan, local_date)
);
CREATE INDEX qr_payments_query_due ON qr_payments (next_query_at) WHERE next_query_at IS NOT NULL;
-- The terminal-deadline sweep: payments whose terminal may still be waiting.
CREATE INDEX qr_payments_terminal_waiting ON qr_payments (terminal_deadline)
    WHERE NOT terminal_gave_up AND state NOT IN ('failed', 'closed', 'refunded', 'confirmed');

-- The audit trail of QR states.
CREATE TABLE qr_transitions (
    id             BIGSERIAL PRIMARY KEY,
    transaction_id UUID NOT NULL REFERENCES qr_payments (transaction_id),
    from_state     TEXT NOT NULL,
    to_state       TEXT NOT NULL,
    event          TEXT NOT NULL,
    command        TEXT NOT NULL,
    at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX qr_transitions_by_payment ON qr_transitions (transaction_id, id);

-- The cancel, close or refund owed to the platform, repeated until
-- acknowledged (durable like the card reversal queue). One row per payment:
-- a refund that overtakes a close replaces it.
CREATE TABLE qr_calls (
    transaction_id   UUID PRIMARY KEY REFERENCES qr_payments (transaction_id),
    kind             TEXT NOT NULL CHECK (kind IN ('cancel', 'close', 'refund')),
    request_id       TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'acknowledged', 'dead_lettered')),
    requested_at     TIMESTAMPTZ NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- Also a lease: claiming an attempt moves it past the call's timeout.
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    last_attempt_at  TIMESTAMPTZ,
    last_error       TEXT,
    acknowledged_at  TIMESTAMPTZ,
    dead_lettered_at TIMESTAMPTZ
);
CREATE INDEX qr_calls_due ON qr_calls (next_attempt_at) WHERE status = 'pending';

-- Nonces of the platform's notifications already accepted: a replay is
-- refused and changes nothing. Kept past the signature's timestamp
-- tolerance, after which a replay is refused as stale anyway.
CREATE TABLE qr_notification_nonces (
    nonce       TEXT PRIMARY KEY,
    notify_id   TEXT NOT NULL,
    order_id    TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
