-- Spend against the gateway's token and cost budgets: one row per budget
-- subject (a tenant or an API key id) and UTC calendar period, added to by
-- one atomic upsert after every call.
CREATE TABLE llm_budget_spend (
    scope         TEXT             NOT NULL,   -- 'tenant' or 'key'
    subject       TEXT             NOT NULL,   -- the tenant name or the API key id
    period        TEXT             NOT NULL,   -- 'day' or 'month'
    period_start  TEXT             NOT NULL,   -- the period's first day, 'YYYY-MM-DD' (UTC)
    tokens        BIGINT           NOT NULL DEFAULT 0,
    cost_usd      DOUBLE PRECISION NOT NULL DEFAULT 0,
    updated_at_ms BIGINT           NOT NULL,
    PRIMARY KEY (scope, subject, period, period_start)
);
