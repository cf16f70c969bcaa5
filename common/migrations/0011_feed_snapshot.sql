-- Migration 0010 locked the records in the same statement that read them for the `processed`
-- events. A row lock that waited refreshes the locked row itself (PostgreSQL's EvalPlanQual), but
-- the rest of that statement keeps the snapshot it started with: media_doc read the attachments
-- as they were before the change it had waited for (an attach that committed first, and sorted
-- first, was missing from the processed event that followed it: the e2e indexer drill, once in
-- about ten runs). The locks are now taken by a statement of their own; the INSERT that follows
-- starts with a new snapshot (a trigger function is VOLATILE: each statement takes one), which
-- sees every change it waited for.
CREATE OR REPLACE FUNCTION processing_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IN ('done', 'failed') AND OLD.state IS DISTINCT FROM NEW.state THEN
        PERFORM 1 FROM media WHERE sha256 = NEW.sha256 ORDER BY id FOR SHARE;
        INSERT INTO outbox (type, subject, data)
            SELECT 'com.recipes.media.processed', m.id::text,
                   media_doc(m) || jsonb_build_object('processing', NEW.state)
            FROM media m WHERE m.sha256 = NEW.sha256;
    END IF;
    RETURN NULL;
END
$$;
