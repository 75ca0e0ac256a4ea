-- The reversal handler's view of approvals: one row per authorization it
-- must watch or has closed. It is derived from authorization's events and
-- never authoritative: authorization is the single writer of the journal,
-- and this table only records deadlines, decisions and whom we asked.
--
--   open     approved, waiting for evidence until deadline_at
--   decided  a decision is recorded; authorization is asked (again) at
--            next_attempt_at until it accepts or refuses
--   closed   nothing more to do; `outcome` says why
CREATE TABLE approvals (
    transaction_id  UUID PRIMARY KEY,
    terminal_id     TEXT NOT NULL,
    merchant_id     TEXT NOT NULL,
    stan            TEXT NOT NULL,
    local_date      TEXT NOT NULL,
    rrn             TEXT NOT NULL,
    -- NULL when the row was created by an issuer timeout, or closed by an
    -- event that arrived before the approval.
    approved_at     TIMESTAMPTZ,
    deadline_at     TIMESTAMPTZ,
    status          TEXT NOT NULL CHECK (status IN ('open', 'decided', 'closed')),
    decision        TEXT CHECK (decision IN ('reverse', 'confirm')),
    -- A ReversalReason name for 'reverse', an Evidence name for 'confirm'.
    reason          TEXT,
    decided_at      TIMESTAMPTZ,
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- Also a lease: a sweeper that claims a row moves this past its call
    -- timeout, so a crashed sweeper's claim expires by itself.
    next_attempt_at TIMESTAMPTZ,
    -- What closed it, e.g. 'confirmed:terminal_acknowledgement',
    -- 'reversal_requested:issuer_timeout', 'reversed', 'superseded'.
    outcome         TEXT,
    closed_at       TIMESTAMPTZ,
    -- W3C trace context of the approval, so the Reverse or Confirm call
    -- joins the trace of the sale that caused it.
    traceparent     TEXT NOT NULL DEFAULT '',
    CONSTRAINT approvals_open_has_deadline
        CHECK (status <> 'open' OR deadline_at IS NOT NULL),
    CONSTRAINT approvals_decided_is_complete
        CHECK (status <> 'decided'
               OR (decision IS NOT NULL AND reason IS NOT NULL AND next_attempt_at IS NOT NULL)),
    CONSTRAINT approvals_closed_has_outcome
        CHECK (status <> 'closed' OR outcome IS NOT NULL)
);

CREATE INDEX approvals_open_deadline ON approvals (deadline_at) WHERE status = 'open';
CREATE INDEX approvals_decided_next_attempt ON approvals (next_attempt_at) WHERE status = 'decided';

CREATE TABLE processed_events (
    consumer     TEXT NOT NULL,
    event_id     UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
