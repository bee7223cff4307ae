-- Run callbacks (docs/callbacks.md). Additive: a replica of the previous
-- version neither reads nor writes these, and keeps working (it stores no
-- callback for a run it ends).

-- The callback a run was started with: where to POST (NULL: none), and
-- which events (agentmesh.orchestrator.v1.CallbackEvents numbers).
ALTER TABLE runs ADD COLUMN callback_url TEXT;
ALTER TABLE runs ADD COLUMN callback_events INTEGER NOT NULL DEFAULT 0;

-- The outbox: one row per callback to deliver, written in the transaction
-- that stores the run's step or end (so a crash neither loses nor invents
-- one), delivered by any replica that claims it (`claimed_by` until
-- `claimed_until`, only while an attempt is in flight), retried at
-- `next_attempt_at`, and kept once delivered or given up (never sent again).
-- `event` is `step:<n>` or `end`: one row per step and per end.
-- `payload` is the JSON body without `delivery_id` and `attempt`.
-- Times are microseconds since the Unix epoch.
CREATE TABLE run_callbacks (
    delivery_id     TEXT PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    event           TEXT NOT NULL,
    tenant          TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    create_time     BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    claimed_by      TEXT NOT NULL DEFAULT '',
    claimed_until   BIGINT NOT NULL DEFAULT 0,
    last_status     INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    delivered_at    BIGINT,
    given_up_at     BIGINT,
    UNIQUE (run_id, event)
);

-- The callbacks still to deliver, by when they are due.
CREATE INDEX run_callbacks_pending ON run_callbacks (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
