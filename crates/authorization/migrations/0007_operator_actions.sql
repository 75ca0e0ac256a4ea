-- What operators did by hand (a redrive of a dead-lettered reversal), who
-- and why, written in the transaction of the decision it caused.
CREATE TABLE operator_actions (
    id             BIGSERIAL PRIMARY KEY,
    transaction_id UUID NOT NULL REFERENCES authorizations (transaction_id),
    action         TEXT NOT NULL,
    operator       TEXT NOT NULL,
    reason         TEXT NOT NULL,
    at             TIMESTAMPTZ NOT NULL
);
