-- The simulated QR platform's own ledger, kept when the simulator runs with
-- `ledger = "database"`: every order, what the shopper was charged, what
-- was refunded, and the notifications still to deliver. Written before the
-- answer is sent, so it stands whether or not the answer reaches the switch,
-- and survives a restart of the simulator (pending notifications resume on
-- their schedule). An audit compares it with the switch's tables.
CREATE TABLE qr_orders (
    out_trade_no     TEXT PRIMARY KEY,
    mode             TEXT NOT NULL CHECK (mode IN ('pay', 'order')),
    transaction_id   TEXT NOT NULL UNIQUE,
    amount_minor     BIGINT NOT NULL CHECK (amount_minor > 0),
    currency         TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN
        ('SUCCESS', 'USERPAYING', 'NOTPAY', 'PAYERROR', 'CLOSED', 'REVOKED', 'REFUND')),
    -- When the shopper pays by the amount's rule, while the order is pending.
    pays_at          TIMESTAMPTZ,
    paid_at          TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    -- Payments the shopper tried after the order was closed: they bounced.
    refused_payments INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX qr_orders_due ON qr_orders (pays_at)
    WHERE pays_at IS NOT NULL AND state IN ('USERPAYING', 'NOTPAY');

CREATE TABLE qr_refunds (
    out_trade_no  TEXT NOT NULL REFERENCES qr_orders (out_trade_no),
    out_refund_no TEXT NOT NULL,
    refund_id     TEXT NOT NULL UNIQUE,
    amount_minor  BIGINT NOT NULL CHECK (amount_minor > 0),
    refunded_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (out_trade_no, out_refund_no)
);

CREATE TABLE qr_notifications (
    notify_id    TEXT PRIMARY KEY,
    out_trade_no TEXT NOT NULL REFERENCES qr_orders (out_trade_no),
    -- The JSON sent on every attempt, byte for byte (re-signed each time).
    body         TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'lost', 'abandoned')),
    -- When the next attempt is due, while pending.
    next_at      TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE INDEX qr_notifications_due ON qr_notifications (next_at) WHERE status = 'pending';
