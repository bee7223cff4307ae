-- The audit log. Append-only: a trigger refuses UPDATE and TRUNCATE always,
-- and DELETE unless the transaction is a retention pass (it sets
-- agentmesh.audit_retention = 'on' locally). PUBLIC loses UPDATE, DELETE and
-- TRUNCATE; run the service as a role that does not own the table for the
-- owner's rights to be out of reach too.
CREATE TABLE audit_events (
    seq             BIGINT PRIMARY KEY,
    event_id        TEXT   NOT NULL UNIQUE,
    time_us         BIGINT NOT NULL,
    record_time_us  BIGINT NOT NULL,
    type            INTEGER NOT NULL,
    service         TEXT   NOT NULL,
    tenant          TEXT   NOT NULL,
    subject         TEXT   NOT NULL,
    run_id          TEXT   NOT NULL,
    trace_id        TEXT   NOT NULL,
    outcome         INTEGER NOT NULL,
    tool            TEXT   NOT NULL,
    model           TEXT   NOT NULL,
    route           TEXT   NOT NULL,
    provider        TEXT   NOT NULL,
    input_tokens    BIGINT NOT NULL,
    output_tokens   BIGINT NOT NULL,
    cost_usd        DOUBLE PRECISION,
    attribute_keys  TEXT   NOT NULL,
    chain           TEXT   NOT NULL,
    hash            TEXT   NOT NULL,
    previous_hash   TEXT   NOT NULL,
    body            BYTEA  NOT NULL
);
CREATE INDEX audit_events_time ON audit_events (time_us, seq);
CREATE INDEX audit_events_run ON audit_events (run_id) WHERE run_id <> '';
CREATE INDEX audit_events_chain ON audit_events (chain, seq);

CREATE TABLE audit_chains (
    chain        TEXT PRIMARY KEY,
    head_seq     BIGINT NOT NULL,
    head_hash    TEXT   NOT NULL,
    anchor_seq   BIGINT NOT NULL DEFAULT 0,
    anchor_hash  TEXT   NOT NULL DEFAULT ''
);

CREATE TABLE audit_log_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq      BIGINT NOT NULL,
    retained_from BIGINT NOT NULL
);
INSERT INTO audit_log_state (id, last_seq, retained_from) VALUES (1, 0, 1);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('agentmesh.audit_retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM PUBLIC;
