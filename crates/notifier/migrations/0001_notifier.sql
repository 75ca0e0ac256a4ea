-- The notifier's own state: merchants' webhook endpoints and every
-- delivery owed to them. All delivery state lives here, so retries survive
-- restarts and replicas share the work through row locks and leases.

-- A merchant's webhook endpoint. The secret is the HMAC key of the
-- Switch-Signature header; it must be stored to sign, is never logged, and
-- is shown to the merchant once, when generated.
CREATE TABLE endpoints (
    endpoint_id UUID PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL DEFAULT true,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Configuration seeds endpoints by (merchant, URL); one URL once.
    CONSTRAINT endpoints_merchant_url UNIQUE (merchant_id, url)
);

-- One webhook owed to one endpoint.
--
--   pending        due at next_attempt_at (or leased to a worker until then)
--   delivered      the endpoint answered 2xx
--   dead_lettered  max attempts failed; an operator may redeliver it
CREATE TABLE deliveries (
    delivery_id      UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The event's id: the body's "id" and the Switch-Event-Id header.
    event_id         UUID NOT NULL,
    -- Webhook type, e.g. 'payment.reversed'.
    event_type       TEXT NOT NULL,
    merchant_id      TEXT NOT NULL,
    endpoint_id      UUID NOT NULL REFERENCES endpoints (endpoint_id),
    -- The exact JSON sent: text, not jsonb, so every attempt signs and
    -- sends the same bytes.
    body             TEXT NOT NULL,
    -- When the event happened; delivery latency is measured from it.
    occurred_at      TIMESTAMPTZ NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'dead_lettered')),
    -- Every attempt ever made.
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- `attempts` when the current attempt budget began: a redelivery gives
    -- a fresh budget and keeps the count for history.
    budget_start     INTEGER NOT NULL DEFAULT 0,
    -- Also a lease: a worker that claims a row moves this past its request
    -- timeout, so a crashed worker's claim comes back by itself.
    next_attempt_at  TIMESTAMPTZ,
    -- Set by each claim; a result is recorded only by the claim that holds
    -- it, never by a worker whose lease ran out and was claimed again.
    lease_token      UUID,
    first_attempt_at TIMESTAMPTZ,
    last_attempt_at  TIMESTAMPTZ,
    -- HTTP status of the last answer (NULL: no answer, e.g. a timeout).
    last_status      INTEGER,
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    dead_lettered_at TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A replayed event creates nothing new.
    CONSTRAINT deliveries_event_endpoint UNIQUE (event_id, endpoint_id),
    CONSTRAINT deliveries_pending_is_scheduled
        CHECK (state <> 'pending' OR next_attempt_at IS NOT NULL)
);

-- The worker's claim: due rows ranked per endpoint.
CREATE INDEX deliveries_due_by_endpoint
    ON deliveries (endpoint_id, next_attempt_at) WHERE state = 'pending';
-- When the next row falls due.
CREATE INDEX deliveries_due
    ON deliveries (next_attempt_at) WHERE state = 'pending';
-- ListFailedDeliveries and Redeliver.
CREATE INDEX deliveries_dead_lettered
    ON deliveries (merchant_id, dead_lettered_at) WHERE state = 'dead_lettered';

CREATE TABLE processed_events (
    consumer     TEXT NOT NULL,
    event_id     UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
