-- The gateway's only state: messages for terminals ("reprint the receipt",
-- "void the receipt") that a terminal has not acknowledged yet. Sales and
-- everything else stay stateless. Rows arrive from the "terminal-messages"
-- topic through the exactly-once consumer; a subscription streams the
-- terminal's unacknowledged rows in sequence order.
CREATE TABLE terminal_messages (
    -- Order of arrival; a terminal's messages arrive in its topic
    -- partition's order, so this is the order they are pushed in.
    sequence        BIGSERIAL PRIMARY KEY,
    -- Derived by the notifier from the causing event: a replay is the same
    -- message and is stored once.
    message_id      UUID NOT NULL UNIQUE,
    terminal_id     TEXT NOT NULL,
    -- 'reprint_receipt' or 'void_receipt'.
    kind            TEXT NOT NULL,
    -- The encoded switch.v1.TerminalMessage, without its sequence.
    payload         BYTEA NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set once by AcknowledgeMessage; an acknowledged message is never
    -- pushed again.
    acknowledged_at TIMESTAMPTZ
);

-- A terminal's backlog, in order: what Subscribe reads.
CREATE INDEX terminal_messages_unacknowledged
    ON terminal_messages (terminal_id, sequence) WHERE acknowledged_at IS NULL;

CREATE TABLE processed_events (
    consumer     TEXT NOT NULL,
    event_id     UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
