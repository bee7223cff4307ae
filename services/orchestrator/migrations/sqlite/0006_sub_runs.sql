-- Sub-runs (strategies router and orchestrator_workers): a run started by
-- another run names it, and a tree shares a token budget. Additive: a replica of the previous version neither
-- reads nor writes it (it starts no sub-run).
ALTER TABLE runs ADD COLUMN parent_run_id TEXT;

-- The token budget the run's tree shares (RunLimits.max_tokens; 0: none).
ALTER TABLE runs ADD COLUMN max_tokens INTEGER NOT NULL DEFAULT 0;
-- The cost budget it shares (RunLimits.max_cost_usd in micro-dollars; 0: none).
ALTER TABLE runs ADD COLUMN max_cost_micros INTEGER NOT NULL DEFAULT 0;

-- A parent's sub-runs (ListRuns by parent_run_id; cancelling a parent).
CREATE INDEX runs_by_parent ON runs (parent_run_id, create_time) WHERE parent_run_id IS NOT NULL;
