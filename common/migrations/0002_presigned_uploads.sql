-- Presigned uploads: a record is created `pending` when the upload is signed and becomes `ready`
-- when its bytes arrive (or `failed`, with a reason). `claimed_at` marks an upload in progress, so
-- that of two PUTs with one token exactly one proceeds.
ALTER TABLE media
    ADD COLUMN expires_at      timestamptz,
    ADD COLUMN declared_sha256 text CHECK (declared_sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN failure_reason  text,
    ADD COLUMN claimed_at      timestamptz;

-- The cleanup looks for pending records past their expiry.
CREATE INDEX media_pending_expiry_idx ON media (expires_at) WHERE status = 'pending';
