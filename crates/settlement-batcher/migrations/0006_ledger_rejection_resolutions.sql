-- Issue 13: operators resolve ledger rejections, once each, saying who and
-- why: dismissed (a duplicate of the key's holder, never paid) or admitted
-- (a distinct sale, which enters the ledger). The rule is
-- switch_core::settlement::rejection; this is its data.
--
-- A rejection keeps the approval's facts, so it can enter the ledger, and
-- where its own events have taken it since (status, evidence, reversal
-- reason), moved as the ledger moves an entry. Rejections recorded before
-- this migration have neither (NULL): their events were dropped, and one
-- is admitted only with a status authorization's journal gives.
ALTER TABLE ledger_rejections
    ADD COLUMN rrn               TEXT,
    ADD COLUMN masked_pan        TEXT,
    ADD COLUMN channel           TEXT,
    ADD COLUMN approval_code     TEXT,
    ADD COLUMN approved_at       TIMESTAMPTZ,
    ADD COLUMN status            TEXT
        CHECK (status IN ('unconfirmed', 'confirmed', 'reversal_pending', 'reversed')),
    ADD COLUMN evidence          TEXT,
    ADD COLUMN reversal_reason   TEXT,
    ADD COLUMN resolution        TEXT CHECK (resolution IN ('dismissed', 'admitted')),
    ADD COLUMN resolved_by       TEXT,
    ADD COLUMN resolution_reason TEXT,
    ADD COLUMN resolved_at       TIMESTAMPTZ,
    ADD CONSTRAINT ledger_rejections_resolved_with_who_why_when CHECK (
        (resolution IS NULL) = (resolved_by IS NULL)
        AND (resolution IS NULL) = (resolution_reason IS NULL)
        AND (resolution IS NULL) = (resolved_at IS NULL));
CREATE INDEX ledger_rejections_open ON ledger_rejections (recorded_at, transaction_id)
    WHERE resolution IS NULL;

-- An admitted sale shares its terminal key with the holder: the key stays
-- unique per instance, 0 for every approval taken in the ordinary way,
-- 1, 2, ... for those admitted after it. Lookups by terminal key keep
-- using the index's leading columns.
ALTER TABLE transactions ADD COLUMN key_instance SMALLINT NOT NULL DEFAULT 0;
DROP INDEX transactions_by_terminal_key;
CREATE UNIQUE INDEX transactions_by_terminal_key
    ON transactions (terminal_id, local_date, stan, key_instance);
