-- The recovery sweep looks for intents still `sent_to_issuer` past their
-- call's deadline (issue 12, hole 1) in a bounded window of creation time.
-- BRIN on created_at: tiny, cheap on the insert-heavy path, and since
-- created_at is never updated it does not stop decision updates from being
-- HOT (a partial index on `state` would).
CREATE INDEX authorizations_created_brin ON authorizations
    USING brin (created_at) WITH (pages_per_range = 32);
