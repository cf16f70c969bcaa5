-- Fitting the recipe application (issue 18): descriptive metadata, attachments to the recipe
-- backend's records, expiry of uploads nobody attached, and a change feed in the outbox.

-- Descriptive metadata and its version (the metadata resource's ETag, for If-Match).
ALTER TABLE media
    ADD COLUMN alt text CHECK (char_length(alt) <= 1000),
    ADD COLUMN caption text CHECK (char_length(caption) <= 2000),
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}' CHECK (cardinality(tags) <= 32),
    ADD COLUMN version integer NOT NULL DEFAULT 1,
    -- Set while the item asked to expire unattached and has no attachment: when it is deleted.
    ADD COLUMN unattached_expires_at timestamptz;
CREATE INDEX media_unattached_expiry_idx ON media (unattached_expires_at)
    WHERE unattached_expires_at IS NOT NULL;
ALTER TABLE media ADD COLUMN expires_unattached boolean NOT NULL DEFAULT false;

-- An item attached to a record of the recipe backend (`kind` such as recipe or step, `ref` its id).
CREATE TABLE attachments (
    media_id   uuid NOT NULL REFERENCES media (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_-]{0,31}$'),
    ref        text NOT NULL CHECK (char_length(ref) BETWEEN 1 AND 128),
    role       text CHECK (role IN ('cover', 'step', 'gallery')),
    position   integer NOT NULL CHECK (position >= 0),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (media_id, kind, ref)
);
CREATE INDEX attachments_ref_idx ON attachments (kind, ref, position, media_id);

-- The change feed: every event row carries the transaction that wrote it, so the pull feed can
-- hand out rows in (xid, id) order and only those of transactions older than every transaction
-- still running: none can appear later before a cursor already handed out (strict, no gaps).
ALTER TABLE outbox ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX outbox_feed_idx ON outbox (xid, id);
CREATE INDEX outbox_created_idx ON outbox (created_at);

-- Where the retention purge has deleted up to: a cursor before it is too old (410).
CREATE TABLE outbox_horizon (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    xid        xid8 NOT NULL,
    id         bigint NOT NULL
);

-- The public document of a record, as the change feed carries it: its fields, and its attachments.
CREATE FUNCTION media_fields(m media) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'id', m.id, 'owner', m.owner, 'filename', m.filename, 'content_type', m.content_type,
        'size', m.size, 'sha256', m.sha256, 'status', m.status, 'failure_reason', m.failure_reason,
        'alt', m.alt, 'caption', m.caption, 'tags', to_jsonb(m.tags), 'version', m.version,
        'expires_at', m.unattached_expires_at, 'created_at', m.created_at, 'updated_at', m.updated_at)
$$;

CREATE FUNCTION media_doc(m media) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT media_fields(m) || jsonb_build_object('attachments', coalesce((
        SELECT jsonb_agg(jsonb_build_object('kind', a.kind, 'ref', a.ref, 'role', a.role,
                                            'position', a.position) ORDER BY a.kind, a.ref)
        FROM attachments a WHERE a.media_id = m.id), '[]'::jsonb))
$$;

-- Every change to a record, in the transaction that makes it (no code path can forget one).
CREATE FUNCTION media_changes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO outbox (type, subject, data)
            VALUES ('com.recipes.media.deleted', OLD.id::text, jsonb_build_object('id', OLD.id, 'owner', OLD.owner));
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        kind := 'created';
    ELSIF NEW.status = 'ready' AND OLD.status = 'pending' THEN
        kind := 'ready';
    ELSIF media_fields(NEW) IS DISTINCT FROM media_fields(OLD) THEN
        kind := 'updated';
    ELSE
        RETURN NULL;  -- nothing public changed (a claim, say)
    END IF;
    INSERT INTO outbox (type, subject, data) VALUES ('com.recipes.media.' || kind, NEW.id::text, media_doc(NEW));
    RETURN NULL;
END
$$;
CREATE TRIGGER media_changes AFTER INSERT OR UPDATE OR DELETE ON media
    FOR EACH ROW EXECUTE FUNCTION media_changes();

CREATE FUNCTION attachment_changes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    m media;
    kind text := CASE WHEN TG_OP = 'DELETE' THEN 'detached' ELSE 'attached' END;
BEGIN
    SELECT * INTO m FROM media WHERE id = coalesce(NEW.media_id, OLD.media_id);
    IF NOT FOUND THEN
        RETURN NULL;  -- the record itself was deleted: its `deleted` event says it all
    END IF;
    INSERT INTO outbox (type, subject, data) VALUES ('com.recipes.media.' || kind, m.id::text, media_doc(m));
    RETURN NULL;
END
$$;
CREATE TRIGGER attachment_changes AFTER INSERT OR UPDATE OR DELETE ON attachments
    FOR EACH ROW EXECUTE FUNCTION attachment_changes();

-- An image's processing finished: each record of that original is `processed`.
CREATE FUNCTION processing_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IN ('done', 'failed') AND OLD.state IS DISTINCT FROM NEW.state THEN
        INSERT INTO outbox (type, subject, data)
            SELECT 'com.recipes.media.processed', m.id::text,
                   media_doc(m) || jsonb_build_object('processing', NEW.state)
            FROM media m WHERE m.sha256 = NEW.sha256;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER processing_changes AFTER UPDATE OF state ON image_jobs
    FOR EACH ROW EXECUTE FUNCTION processing_changes();
