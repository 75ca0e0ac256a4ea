-- Issue 3 (throughput): no query of the service reads a transaction's
-- history by its id (only tests and the demo do, on small tables, where a
-- scan is fine), and maintaining this index on every transition cost about
-- 12% of the authorization throughput at concurrency 64 (2,075–2,163/s
-- with it, 2,409–2,418/s without, `make bench` on 2 cores).
DROP INDEX IF EXISTS authorization_transitions_by_transaction;
