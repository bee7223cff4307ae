-- The audit log. Append-only: triggers refuse UPDATE always and DELETE
-- outside a retention pass (which sets audit_retention_guard.active inside
-- its own transaction).
CREATE TABLE audit_events (
    seq             INTEGER PRIMARY KEY,
    event_id        TEXT    NOT NULL UNIQUE,
    time_us         INTEGER NOT NULL,
    record_time_us  INTEGER NOT NULL,
    type            INTEGER NOT NULL,
    service         TEXT    NOT NULL,
    tenant          TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    run_id          TEXT    NOT NULL,
    trace_id        TEXT    NOT NULL,
    outcome         INTEGER NOT NULL,
    tool            TEXT    NOT NULL,
    model           TEXT    NOT NULL,
    route           TEXT    NOT NULL,
    provider        TEXT    NOT NULL,
    input_tokens    INTEGER NOT NULL,
    output_tokens   INTEGER NOT NULL,
    cost_usd        REAL,
    attribute_keys  TEXT    NOT NULL,
    chain           TEXT    NOT NULL,
    hash            TEXT    NOT NULL,
    previous_hash   TEXT    NOT NULL,
    body            BLOB    NOT NULL
);
CREATE INDEX audit_events_time ON audit_events (time_us, seq);
CREATE INDEX audit_events_run ON audit_events (run_id) WHERE run_id <> '';
CREATE INDEX audit_events_chain ON audit_events (chain, seq);

-- The head and retention anchor of each hash chain.
CREATE TABLE audit_chains (
    chain        TEXT PRIMARY KEY,
    head_seq     INTEGER NOT NULL,
    head_hash    TEXT    NOT NULL,
    anchor_seq   INTEGER NOT NULL DEFAULT 0,
    anchor_hash  TEXT    NOT NULL DEFAULT ''
);

-- One row: the last sequence number given out (never reused, even when
-- retention deletes the newest events) and the first one retained.
CREATE TABLE audit_log_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq      INTEGER NOT NULL,
    retained_from INTEGER NOT NULL
);
INSERT INTO audit_log_state (id, last_seq, retained_from) VALUES (1, 0, 1);

CREATE TABLE audit_retention_guard (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    active INTEGER NOT NULL
);
INSERT INTO audit_retention_guard (id, active) VALUES (1, 0);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN (SELECT active FROM audit_retention_guard WHERE id = 1) IS NOT 1
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused outside retention');
END;
