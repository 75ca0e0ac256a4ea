-- Approvals the ledger could not take because another transaction already
-- holds their terminal + local date + STAN. Authorization keeps that key
-- unique, so a rejection means its journal was reset or restored, or another
-- deployment writes to the same topics. The approval is not paid until an
-- operator resolves it; the consumer goes on with the events after it
-- instead of retrying it forever.
CREATE TABLE ledger_rejections (
    transaction_id        UUID PRIMARY KEY,
    terminal_id           TEXT NOT NULL,
    local_date            DATE NOT NULL,
    stan                  TEXT NOT NULL,
    merchant_id           TEXT NOT NULL,
    amount_minor          BIGINT NOT NULL,
    currency              TEXT NOT NULL,
    held_by               UUID NOT NULL,
    recorded_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
