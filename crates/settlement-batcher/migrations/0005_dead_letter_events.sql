-- Events this consumer gave up on (switch_platform::consumer::DEAD_LETTER_EVENTS_DDL):
-- a poison event fails alone, every time, for reasons of its own; it is
-- kept here for a replay after a fix, and the consumer moves on.
CREATE TABLE dead_letter_events (
    consumer         TEXT NOT NULL,
    topic            TEXT NOT NULL,
    kafka_partition  INTEGER NOT NULL,
    kafka_offset     BIGINT NOT NULL,
    payload          BYTEA NOT NULL,
    error            TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    dead_lettered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at      TIMESTAMPTZ,
    PRIMARY KEY (consumer, topic, kafka_partition, kafka_offset)
);
