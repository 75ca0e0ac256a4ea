-- The authorization journal: one row per authorization, written only by
-- the authorization service. Card numbers are never stored: only the masked
-- form for display and a keyed HMAC-SHA256 fingerprint for lookups.
CREATE TABLE authorizations (
    transaction_id   UUID PRIMARY KEY,
    terminal_id      TEXT NOT NULL,
    merchant_id      TEXT NOT NULL,
    stan             TEXT NOT NULL,
    local_date       DATE NOT NULL,
    rrn              TEXT NOT NULL UNIQUE,
    masked_pan       TEXT NOT NULL,
    pan_fingerprint  TEXT NOT NULL,
    amount_minor     BIGINT NOT NULL CHECK (amount_minor > 0),
    currency         TEXT NOT NULL CHECK (length(currency) = 3),
    state            TEXT NOT NULL,
    response_code    TEXT,
    approval_code    TEXT,
    issuer_latency_ms INTEGER,
    acknowledged_at  TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A terminal's retry carries the same key: this is what makes Authorize
    -- idempotent across processes and restarts.
    CONSTRAINT authorizations_terminal_key UNIQUE (terminal_id, stan, local_date)
);

CREATE INDEX authorizations_terminal_recent ON authorizations (terminal_id, created_at DESC);

-- Every state change, in order, with the event that caused it.
CREATE TABLE authorization_transitions (
    id             BIGSERIAL PRIMARY KEY,
    transaction_id UUID NOT NULL REFERENCES authorizations (transaction_id),
    from_state     TEXT,
    to_state       TEXT NOT NULL,
    event          TEXT NOT NULL,
    at             TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX authorization_transitions_by_transaction ON authorization_transitions (transaction_id, id);

-- RRN sequence numbers are handed out in blocks of 1000 per process, so
-- assigning an RRN costs no round trip on the hot path.
CREATE SEQUENCE rrn_blocks;

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
