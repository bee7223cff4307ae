-- Event ids are unique per chain (one chain per tenant), not globally: a
-- tenant must not be able to claim ids that another tenant's events will
-- use. No row changes; the constraint is replaced by a unique index (ids
-- first, so the idempotency lookup by id stays an index search).
ALTER TABLE audit_events DROP CONSTRAINT audit_events_event_id_key;
CREATE UNIQUE INDEX audit_events_event_id_chain ON audit_events (event_id, chain);
