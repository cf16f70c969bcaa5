-- The processing backfill (`processing.backfill`): how far the maintenance has walked the records
-- for each recipe version, so images stored before there was a process function (migration 0005),
-- and every image again when `imaging.RECIPE` is bumped, get their job. The walk goes in primary-key
-- order, a bounded batch per maintenance round; `after_id` NULL: not begun; `finished_at`: done.
CREATE TABLE processing_backfill (
    recipe      integer PRIMARY KEY,
    after_id    uuid,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
