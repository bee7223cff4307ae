-- What replicas on one database need to cooperate. Additive: a replica of
-- the previous version neither reads nor writes these, and keeps working.

-- The highest event sequence the run's driver may have streamed: it is
-- raised (in blocks) before an event above it goes out. A driver resuming
-- the run starts after it, and a stored restart marker names the numbers
-- in between that were never stored (docs/scale-out.md, "Step epochs").
ALTER TABLE runs ADD COLUMN sequence_reserved INTEGER NOT NULL DEFAULT 0;

-- A cancel recorded by any replica: its reason and who asked (NULL: none).
-- The replica driving the run is told at once (NOTIFY on PostgreSQL) and
-- also sees it at its next checkpoint and maintenance look.
ALTER TABLE runs ADD COLUMN cancel_reason TEXT;
ALTER TABLE runs ADD COLUMN cancelled_by TEXT NOT NULL DEFAULT '';

-- The run's priority (-100 to 100): its place in its tenant's queue on
-- the replica it waits at, kept when another replica resumes it.
ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;

-- The live orchestrator replicas and where the others reach them: a
-- follower on one replica of a run another drives follows it there.
-- `seen_until` is the replica's lease, renewed with its run claims.
CREATE TABLE orchestrator_replicas (
    owner      TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    seen_until BIGINT NOT NULL
);
