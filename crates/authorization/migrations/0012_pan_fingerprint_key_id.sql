-- ADR 33: the PAN fingerprint key can be rotated. Each fingerprint names
-- the key it was made with, so a retry is compared under that key and a
-- card is never compared across two keys. Every row journaled before key
-- ids carries 'k1', the id the configured key has unless renamed
-- (authorization.pan_hash_key_id, default "k1"). Adding a column with a
-- constant default rewrites no row (PostgreSQL 11 and later); the default
-- is dropped after, so every new row must name its key.
ALTER TABLE authorizations ADD COLUMN pan_fingerprint_key_id TEXT NOT NULL DEFAULT 'k1';
ALTER TABLE authorizations ALTER COLUMN pan_fingerprint_key_id DROP DEFAULT;
