-- Event ids are unique per chain (one chain per tenant), not globally: a
-- tenant must not be able to claim ids that another tenant's events will
-- use. SQLite cannot drop a column's UNIQUE constraint, so the table is
-- rebuilt (the documented procedure: new table, copy, drop, rename), with
-- every row, index and trigger kept. Dropping a table fires no trigger.
-- The unique index puts ids first, so the idempotency lookup by id stays
-- an index search.
CREATE TABLE audit_events_new (
    seq             INTEGER PRIMARY KEY,
    event_id        TEXT    NOT NULL,
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
INSERT INTO audit_events_new SELECT seq, event_id, time_us, record_time_us, type, service,
    tenant, subject, run_id, trace_id, outcome, tool, model, route, provider, input_tokens,
    output_tokens, cost_usd, attribute_keys, chain, hash, previous_hash, body
FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_new RENAME TO audit_events;

CREATE UNIQUE INDEX audit_events_event_id_chain ON audit_events (event_id, chain);
CREATE INDEX audit_events_time ON audit_events (time_us, seq);
CREATE INDEX audit_events_run ON audit_events (run_id) WHERE run_id <> '';
CREATE INDEX audit_events_chain ON audit_events (chain, seq);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN (SELECT active FROM audit_retention_guard WHERE id = 1) IS NOT 1
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused outside retention');
END;
