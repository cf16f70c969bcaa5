-- Cluster-wide maintenance that one process should do per interval (the orphan reconciler walks
-- the whole store): each round is claimed by updating `last_run`, which only one process wins.
CREATE TABLE maintenance_rounds (
    task     text PRIMARY KEY,
    last_run timestamptz NOT NULL
);
