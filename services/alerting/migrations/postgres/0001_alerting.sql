-- The alerting service's state: what it must not forget across restarts.

-- Small named values; "audit_cursor" is the position reached in the audit
-- stream (the cursor of the last event or heartbeat processed).
CREATE TABLE alerting_state (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Per rule and group: the sliding window and pending/firing bookkeeping,
-- written in the same transaction as the audit cursor it reflects.
CREATE TABLE rule_groups (
    rule      TEXT NOT NULL,
    group_key TEXT NOT NULL,
    state     TEXT NOT NULL,
    PRIMARY KEY (rule, group_key)
);

-- Current alerts (pending, firing, recently resolved). Times in
-- microseconds since the Unix epoch.
CREATE TABLE alerts (
    fingerprint   TEXT PRIMARY KEY,
    labels        TEXT NOT NULL,
    annotations   TEXT NOT NULL,
    state         INTEGER NOT NULL,
    starts_at     BIGINT,
    ends_at       BIGINT,
    updated_at    BIGINT NOT NULL,
    active_at     BIGINT,
    rule          TEXT NOT NULL,
    generator_url TEXT NOT NULL,
    value         DOUBLE PRECISION NOT NULL
);

CREATE TABLE silences (
    id         TEXT PRIMARY KEY,
    matchers   TEXT NOT NULL,
    starts_at  BIGINT NOT NULL,
    ends_at    BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    comment    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX silences_by_creation ON silences (created_at DESC, id DESC);

-- Alertmanager's notification log: per receiver integration and group, what
-- was last notified and when.
CREATE TABLE notification_log (
    receiver    TEXT NOT NULL,
    integration TEXT NOT NULL,
    group_key   TEXT NOT NULL,
    firing      TEXT NOT NULL,
    resolved    TEXT NOT NULL,
    notified_at BIGINT NOT NULL,
    PRIMARY KEY (receiver, integration, group_key)
);
