-- The rate limiter's state is not data anyone keeps: a crash that loses it only lets every
-- client start with its full quota again. Written without WAL, an update no longer waits for a
-- WAL flush: an upload charges its bytes every 8 MiB while it streams (ratelimit.BYTES_STEP), and
-- each charge was a synchronous commit competing with the upload's own writes for the disk.
-- (An unlogged table is emptied by crash recovery and not copied to streaming replicas: after a
-- failover the limits start afresh, which is the same thing.)
ALTER TABLE rate_limits SET UNLOGGED;
