-- Media records. The bytes live in the content-addressable store under `sha256`; several records
-- may share one blob (dedup), so the blob is removed only with the last record that names it.
CREATE TABLE media (
    id           uuid PRIMARY KEY,
    owner        text NOT NULL CHECK (owner <> ''),
    filename     text NOT NULL,
    content_type text NOT NULL,
    size         bigint NOT NULL CHECK (size >= 0),
    sha256       text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    status       text NOT NULL DEFAULT 'ready' CHECK (status IN ('pending', 'ready', 'failed')),
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (status <> 'ready' OR sha256 IS NOT NULL)
);

-- Listing: newest first per owner (and for admins across owners), keyset on (created_at, id).
CREATE INDEX media_owner_created_idx ON media (owner, created_at DESC, id DESC);
CREATE INDEX media_created_idx ON media (created_at DESC, id DESC);
-- Reference counting of blobs.
CREATE INDEX media_sha256_idx ON media (sha256);
