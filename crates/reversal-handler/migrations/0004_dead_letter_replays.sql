-- Who replayed a dead-lettered event, why, and what the replay did
-- (switch_platform::consumer::DEAD_LETTER_REPLAYS_DDL): written by
-- `switchd admin dead-letters replay` in the transaction that applies it.
ALTER TABLE dead_letter_events
    ADD COLUMN replayed_by   TEXT,
    ADD COLUMN replay_reason TEXT,
    ADD COLUMN replay_result TEXT;
