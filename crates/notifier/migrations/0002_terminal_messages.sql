-- Messages for terminals ("reprint the receipt", "void the receipt") leave
-- through a transactional outbox: queued in the consumer's transaction
-- with the event that caused them, published to "terminal-messages" by the
-- relay, so a crash delays a message but never loses or invents one.

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
