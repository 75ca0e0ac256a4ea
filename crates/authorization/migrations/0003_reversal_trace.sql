-- The W3C trace context of the request that made a reversal owed, so every
-- attempt to the issuer joins the transaction's trace.
ALTER TABLE reversals ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
