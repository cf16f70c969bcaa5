-- The integrity scrub (common/scrub.py). A record whose blob no longer matches its SHA-256 becomes
-- `corrupt` (the blob is quarantined; the record stays so until it is deleted).
ALTER TABLE media DROP CONSTRAINT media_status_check;
ALTER TABLE media ADD CONSTRAINT media_status_check
    CHECK (status IN ('pending', 'ready', 'failed', 'corrupt'));

-- Where the scrub stands, one row: the last digest checked of the pass in progress (in digest
-- order, '' before the first), when that pass started and finished, what it read and found.
CREATE TABLE scrub_state (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    cursor_sha256    text NOT NULL DEFAULT '' CHECK (cursor_sha256 = '' OR cursor_sha256 ~ '^[0-9a-f]{64}$'),
    pass_started_at  timestamptz,
    pass_finished_at timestamptz,
    pass_bytes       bigint NOT NULL DEFAULT 0 CHECK (pass_bytes >= 0),
    pass_mismatches  integer NOT NULL DEFAULT 0 CHECK (pass_mismatches >= 0),
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
