-- Issue 16, part 5: the QR calls and merchant refunds given up on are
-- gauges operators watch (authorization.qr.dead_lettered), counted once a
-- second. Partial indexes keep that count to the few dead letters instead
-- of every payment's row, as reversals_dead_lettered does for the card
-- reversal queue.
CREATE INDEX qr_calls_dead_lettered ON qr_calls (kind) WHERE status = 'dead_lettered';
CREATE INDEX qr_refunds_dead_lettered ON qr_refunds (transaction_id) WHERE state = 'dead_lettered';
