-- Rate limits shared by gateway replicas: one row per meter (a tenant's or
-- a route's requests or tokens) holding its GCRA state, the theoretical
-- arrival time (TAT), from which each replica leases small batches of
-- cells with one call of llm_rate_limit_lease. A row whose TAT is in the
-- past is the same as no row (a full burst), so idle rows may be deleted.
CREATE TABLE llm_rate_limits (
    meter  TEXT   PRIMARY KEY,   -- '<scope>/<resource>/<key>', e.g. 'tenant/requests/acme'
    tat_ns BIGINT NOT NULL       -- the TAT, in nanoseconds since the Unix epoch (this database's clock)
);

CREATE INDEX llm_rate_limits_tat ON llm_rate_limits (tat_ns);

-- Leases between p_min and p_max cells of p_meter, whose GCRA emits a cell
-- every p_interval_ns and lets the TAT run at most p_tolerance_ns (burst x
-- interval) ahead of now. First it charges p_adjust cells (a debt) or gives
-- them back (negative; never moving the TAT before now). It grants as many
-- cells as fit up to p_max, or none when fewer than p_min fit, and moves the
-- TAT on by what it granted. wait_ns is how long until max(p_min, 1) more
-- cells fit. The row is locked for the call, so concurrent leases of one
-- meter (from any replica) apply one after the other. The clock is the
-- database's, the same for every replica.
CREATE FUNCTION llm_rate_limit_lease(
    p_meter        TEXT,
    p_interval_ns  BIGINT,
    p_tolerance_ns BIGINT,
    p_min          BIGINT,
    p_max          BIGINT,
    p_adjust       BIGINT,
    OUT granted    BIGINT,
    OUT wait_ns    BIGINT
) LANGUAGE plpgsql AS $$
DECLARE
    v_now  BIGINT := (extract(epoch FROM clock_timestamp()) * 1000000000)::BIGINT;
    v_tat  BIGINT;
    v_free BIGINT;
BEGIN
    LOOP
        SELECT tat_ns INTO v_tat FROM llm_rate_limits WHERE meter = p_meter FOR UPDATE;
        EXIT WHEN FOUND;
        -- A new meter starts at rest; a concurrent first lease inserts it once.
        INSERT INTO llm_rate_limits (meter, tat_ns) VALUES (p_meter, v_now)
            ON CONFLICT (meter) DO NOTHING;
    END LOOP;
    v_tat := greatest(greatest(v_tat, v_now) + p_adjust * p_interval_ns, v_now);
    -- Whole cells that fit before the TAT runs more than the tolerance ahead.
    v_free := greatest((p_tolerance_ns - (v_tat - v_now)) / p_interval_ns, 0);
    granted := CASE WHEN v_free >= p_min THEN least(v_free, p_max) ELSE 0 END;
    v_tat := v_tat + granted * p_interval_ns;
    UPDATE llm_rate_limits SET tat_ns = v_tat WHERE meter = p_meter;
    wait_ns := greatest(v_tat - v_now - p_tolerance_ns + greatest(p_min, 1) * p_interval_ns, 0);
END
$$;
