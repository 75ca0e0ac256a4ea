-- Issue 13: operators list the reversals given up on, with what their
-- attempts got. The claim of an attempt stamps when it was sent; recording
-- its answer keeps the issuer's response code (NULL when it did not
-- answer; last_error then says what happened).
ALTER TABLE reversals
    ADD COLUMN last_attempt_at    TIMESTAMPTZ,
    ADD COLUMN last_response_code TEXT;
-- Dead letters are few and listed oldest first, a page at a time; a
-- partial index costs nothing on the hot path of pending reversals.
CREATE INDEX reversals_dead_lettered ON reversals (dead_lettered_at, transaction_id)
    WHERE status = 'dead_lettered';
