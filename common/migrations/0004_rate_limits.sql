-- Rate limits shared by every process (see common/ratelimit.py): GCRA keeps, per key
-- ("<limit>:<subject or client IP>"), one timestamp, the theoretical arrival time of the next
-- unit. A key whose `tat` has passed is at full quota, as if absent: the maintenance deletes it.
CREATE TABLE rate_limits (
    key text PRIMARY KEY,
    tat timestamptz NOT NULL,
    allowed boolean NOT NULL
);
CREATE INDEX rate_limits_tat_idx ON rate_limits (tat);
