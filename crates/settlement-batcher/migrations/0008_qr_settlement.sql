-- QR payments settle through the same ledger as card sales (ADR 31).
--
-- A QR payment has no RRN and no card: its row keeps `rrn` and
-- `masked_pan` empty (NOT NULL stays, no CHECK forbids empty) and names
-- its order at the platform instead. One row per order.
ALTER TABLE transactions ADD COLUMN qr_order_id TEXT;
CREATE UNIQUE INDEX transactions_by_qr_order ON transactions (qr_order_id)
    WHERE qr_order_id IS NOT NULL;

-- A window records both of the merchant's rates it applied; NULL for the
-- windows closed before QR payments were settled.
ALTER TABLE windows ADD COLUMN qr_fee_basis_points INTEGER;

-- Merchant refunds of earlier QR payments are deducted from a payout.
ALTER TABLE payouts
    ADD COLUMN refund_count       BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refund_minor_units BIGINT NOT NULL DEFAULT 0;
ALTER TABLE payouts DROP CONSTRAINT payouts_check;
ALTER TABLE payouts ADD CONSTRAINT payouts_net_after_fee_and_refunds CHECK (
    refund_count >= 0 AND refund_minor_units >= 0 AND net_minor_units >= 0
    AND net_minor_units = gross_minor_units - fee_minor_units - refund_minor_units
);

-- A merchant refund the platform completed: the acquirer takes it back
-- from the merchant's next payout in its currency (switch_core::net_refunds
-- decides which window). `window_id` is the window it was netted in; NULL
-- while it waits.
CREATE TABLE refund_debits (
    refund_id      TEXT PRIMARY KEY,
    transaction_id UUID NOT NULL,
    merchant_id    TEXT NOT NULL,
    amount_minor   BIGINT NOT NULL CHECK (amount_minor > 0),
    currency       TEXT NOT NULL,
    completed_at   TIMESTAMPTZ NOT NULL,
    window_id      UUID REFERENCES windows (window_id),
    recorded_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX refund_debits_waiting ON refund_debits (merchant_id, completed_at, refund_id)
    WHERE window_id IS NULL;
CREATE INDEX refund_debits_by_transaction ON refund_debits (transaction_id);
