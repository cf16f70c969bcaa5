-- The change feed orders events by the id of the transaction that wrote them, which a
-- transaction gets at its first write: not always the order the transactions commit in. A
-- `processed` event reads the records of its original without writing them. A patch, detach or
-- delete of one of them, running at the same time, could commit before it yet sort after it, or
-- sort before it while the processed event carries the record as it was before that change:
-- either way the record's last event in the feed would not be its last state (a deleted record
-- could even come back to an indexer).
-- Now the processed event locks the records FOR SHARE: it waits for a change in progress, then
-- reads its result (or skips a deleted record). Every writer of a record takes the record's row
-- lock at its first write (sql_recipes._lock_records for attachments), and finish_job takes the
-- digest lock before its own: each transaction's id is then in the order its locks were taken.
CREATE OR REPLACE FUNCTION processing_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IN ('done', 'failed') AND OLD.state IS DISTINCT FROM NEW.state THEN
        INSERT INTO outbox (type, subject, data)
            SELECT 'com.recipes.media.processed', m.id::text,
                   media_doc(m) || jsonb_build_object('processing', NEW.state)
            FROM (SELECT * FROM media WHERE sha256 = NEW.sha256 ORDER BY id FOR SHARE) m;
    END IF;
    RETURN NULL;
END
$$;
