-- Issue 15 (ADR 30): merchant refunds of confirmed QR payments, in full or
-- in part. One row per refund holds switch_core::qr::refund::QrRefund; the
-- row is also its own queue entry (next_attempt_at), like qr_calls.
CREATE TABLE qr_refunds (
    refund_id        TEXT PRIMARY KEY,
    transaction_id   UUID NOT NULL REFERENCES qr_payments (transaction_id),
    amount_minor     BIGINT NOT NULL CHECK (amount_minor > 0),
    currency         TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('requested', 'refunded', 'dead_lettered')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    requested_at     TIMESTAMPTZ NOT NULL,
    -- Where the attempts' age starts: requested_at, or the last redrive.
    since            TIMESTAMPTZ NOT NULL,
    -- Due when not after the worker's `now`; also a lease: claiming an
    -- attempt moves it past the call's timeout.
    next_attempt_at  TIMESTAMPTZ,
    completed_at     TIMESTAMPTZ,
    operator         TEXT NOT NULL,
    reason           TEXT NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX qr_refunds_by_payment ON qr_refunds (transaction_id, requested_at);
CREATE INDEX qr_refunds_due ON qr_refunds (next_attempt_at) WHERE state = 'requested';

-- What operators did to QR payments by hand (a refund, a redrive), who and
-- why, written in the transaction of the decision it caused. The card
-- table (0007) references authorizations, so QR has its own.
CREATE TABLE qr_operator_actions (
    id             BIGSERIAL PRIMARY KEY,
    transaction_id UUID NOT NULL REFERENCES qr_payments (transaction_id),
    refund_id      TEXT,
    action         TEXT NOT NULL,
    operator       TEXT NOT NULL,
    reason         TEXT NOT NULL,
    at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX qr_operator_actions_by_payment ON qr_operator_actions (transaction_id, id);

-- The nonce prune deletes by age.
CREATE INDEX qr_notification_nonces_by_age ON qr_notification_nonces (received_at);
