-- People's data (issue 17): what each subject keeps stored, the holds concurrent uploads take on
-- their quota, and erasure jobs with their receipts.

-- Logical usage per owner: the bytes and files of the owner's stored records (what they uploaded;
-- a deduplicated blob counts for each owner who has it). Kept by a trigger in the transaction of
-- every insert, completion, status change and delete, so no code path can forget it and no
-- request ever needs a scan.
CREATE TABLE usage (
    owner text PRIMARY KEY,
    bytes bigint NOT NULL DEFAULT 0,
    files bigint NOT NULL DEFAULT 0
);

CREATE FUNCTION media_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status IN ('ready', 'corrupt') THEN
        UPDATE usage SET bytes = bytes - OLD.size, files = files - 1 WHERE owner = OLD.owner;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status IN ('ready', 'corrupt') THEN
        INSERT INTO usage AS u (owner, bytes, files) VALUES (NEW.owner, NEW.size, 1)
        ON CONFLICT (owner) DO UPDATE SET bytes = u.bytes + EXCLUDED.bytes, files = u.files + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER media_usage AFTER INSERT OR DELETE OR UPDATE OF status, size, owner ON media
    FOR EACH ROW EXECUTE FUNCTION media_usage();

INSERT INTO usage (owner, bytes, files)
    SELECT owner, sum(size), count(*) FROM media WHERE status = 'ready' GROUP BY owner;

-- What uploads in flight have reserved of their owner's quota: taken at the start (a presign: the
-- declared size; a direct upload: grown while it streams), settled in the transaction that writes
-- the record, released on failure. A hold whose process died lapses at `expires_at`.
CREATE TABLE quota_holds (
    id         uuid PRIMARY KEY,
    owner      text NOT NULL,
    bytes      bigint NOT NULL CHECK (bytes >= 0),
    files      integer NOT NULL CHECK (files >= 0),
    expires_at timestamptz NOT NULL
);
CREATE INDEX quota_holds_owner_idx ON quota_holds (owner, expires_at);
CREATE INDEX quota_holds_expires_idx ON quota_holds (expires_at);

-- Erasure of everything a subject owns, as a resumable job: batches of records, each deleted in
-- its digest's transaction with the receipt's counts; `lease_until` says a process is on it (one
-- that died loses the lease, another takes over).
CREATE TABLE erasures (
    id              uuid PRIMARY KEY,
    subject         text NOT NULL CHECK (subject <> ''),
    requested_by    text NOT NULL,
    state           text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done')),
    records_removed bigint NOT NULL DEFAULT 0,
    blobs_removed   bigint NOT NULL DEFAULT 0,
    bytes_freed     bigint NOT NULL DEFAULT 0,
    requested_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz,
    lease_until     timestamptz
);
-- One erasure of a subject runs at a time: asking again answers the running one.
CREATE UNIQUE INDEX erasures_running_idx ON erasures (subject) WHERE state = 'running';
CREATE INDEX erasures_subject_idx ON erasures (subject, requested_at DESC);

-- Blobs whose last record an erasure deleted, written in that record's transaction and checked
-- (unlinked if nothing else references them, and counted) in the blob's own: a crash between the
-- two leaves the row, and the resumed erasure finishes it, so the receipt stays exact.
CREATE TABLE erasure_blobs (
    erasure uuid NOT NULL REFERENCES erasures (id) ON DELETE CASCADE,
    sha256  text NOT NULL,
    size    bigint NOT NULL,
    PRIMARY KEY (erasure, sha256)
);
