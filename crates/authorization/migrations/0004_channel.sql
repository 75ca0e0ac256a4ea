-- How the payment was taken ("card" or "qr"): acknowledgement deadlines
-- differ per channel.
ALTER TABLE authorizations ADD COLUMN channel TEXT NOT NULL DEFAULT 'card';
