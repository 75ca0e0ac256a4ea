-- The ledger's rules live in switch_core::settlement::ledger, once: the
-- order a status moves in (it was status_rank here) and what may be paid
-- in a window (it was also this table's CHECK). The batcher locks a row,
-- decides in Rust and writes the decision; the constraints left guard the
-- data's shape (allowed status names, positive amounts), not the rules.
ALTER TABLE transactions DROP CONSTRAINT transactions_check;
DROP FUNCTION status_rank(TEXT);

-- Stored names are parsed strictly now; an empty string was only ever a
-- proto3 default standing for "none".
UPDATE transactions SET evidence = NULL WHERE evidence = '';
UPDATE transactions SET reversal_reason = NULL WHERE reversal_reason = '';
