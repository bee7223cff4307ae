-- Runs, their event logs, their latest checkpoint, and sessions.
-- Times are microseconds since the Unix epoch (portable across backends).

CREATE TABLE sessions (
    session_id  TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    create_time BIGINT NOT NULL
);

CREATE TABLE runs (
    run_id            TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    subject           TEXT NOT NULL,
    agent             TEXT NOT NULL,
    session_id        TEXT NOT NULL REFERENCES sessions (session_id),
    objective         TEXT NOT NULL,
    -- agentmesh.orchestrator.v1.RunState numbers.
    state             INTEGER NOT NULL,
    -- NULL when the request had none; unique per tenant otherwise.
    idempotency_key   TEXT,
    model             TEXT NOT NULL,
    max_steps         INTEGER NOT NULL,
    max_output_tokens INTEGER NOT NULL,
    timeout_ms        BIGINT NOT NULL,
    -- JSON object of the run's labels (also in run_labels, for filtering).
    labels            TEXT NOT NULL,
    create_time       BIGINT NOT NULL,
    start_time        BIGINT,
    end_time          BIGINT,
    output            TEXT NOT NULL DEFAULT '',
    -- google.rpc.Status, protobuf-encoded, when the run failed.
    error             BYTEA,
    input_tokens      BIGINT NOT NULL DEFAULT 0,
    output_tokens     BIGINT NOT NULL DEFAULT 0,
    steps             INTEGER NOT NULL DEFAULT 0,
    tool_calls        INTEGER NOT NULL DEFAULT 0,
    last_sequence     INTEGER NOT NULL DEFAULT 0,
    -- Which orchestrator instance drives the run, and until when its claim
    -- holds; an unfinished run whose lease ran out is resumed by another.
    owner             TEXT NOT NULL DEFAULT '',
    lease_until       BIGINT NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX runs_idempotency_key ON runs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_by_tenant_newest ON runs (tenant, create_time DESC, run_id DESC);
CREATE INDEX runs_by_session ON runs (session_id, create_time);
CREATE INDEX runs_unfinished ON runs (state, lease_until) WHERE state IN (1, 2);

CREATE TABLE run_labels (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX run_labels_by_pair ON run_labels (key, value);

-- The run's event log: RunEvent, protobuf-encoded, one row per sequence.
CREATE TABLE run_events (
    run_id   TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    sequence INTEGER NOT NULL,
    event    BYTEA NOT NULL,
    PRIMARY KEY (run_id, sequence)
);

-- The latest checkpoint of a run: the conversation and counters after its
-- last completed step (protobuf-encoded), enough to resume it.
CREATE TABLE checkpoints (
    run_id      TEXT PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
    step        INTEGER NOT NULL,
    state       BYTEA NOT NULL,
    update_time BIGINT NOT NULL
);
