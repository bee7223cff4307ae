-- The replica leading the alerting service (it holds the PostgreSQL
-- advisory lock) and the address its peers forward writes and WatchAlerts
-- to. One row at most: written by a new leader, deleted when it steps
-- down. `lock_pid` is the backend pid of the leader's lock session, so a
-- reader can tell a live row (that pid holds the lock) from a stale one.
-- Additive: replicas of the previous version neither read nor write it.
CREATE TABLE alerting_leader (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    url        TEXT NOT NULL,
    lock_pid   INTEGER NOT NULL,
    since      BIGINT NOT NULL
);
