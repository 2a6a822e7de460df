-- Partition lifecycle: the maintenance policy shared by the server's scheduler and the
-- `partition-jobs` CLI, and the record of every maintenance run (for health and DBA history).

-- Exactly one row (id is always true), so the server and the CLI apply the same policy.
CREATE TABLE partition_policy (
    id                          boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- Months kept ready after the current one, so ingestion never waits on DDL.
    premake_months              integer NOT NULL DEFAULT 3 CHECK (premake_months BETWEEN 0 AND 120),
    -- Whole months kept before the current one; NULL keeps everything (retention off).
    retention_months            integer CHECK (retention_months BETWEEN 1 AND 1200),
    -- What retention does with an expired month: detach it (data kept as a plain table) or drop it.
    retention_mode              text NOT NULL DEFAULT 'detach' CHECK (retention_mode IN ('detach', 'drop')),
    -- A partition is re-analyzed once this many rows changed since its last ANALYZE ...
    analyze_min_changed_rows    bigint NOT NULL DEFAULT 1000 CHECK (analyze_min_changed_rows >= 1),
    -- ... and at least this fraction of its estimated rows.
    analyze_changed_fraction    double precision NOT NULL DEFAULT 0.1
                                CHECK (analyze_changed_fraction >= 0 AND analyze_changed_fraction <= 10),
    -- The parent (never auto-analyzed; ANALYZE on it also samples every partition) at most this often.
    parent_analyze_min_interval_minutes integer NOT NULL DEFAULT 360
                                CHECK (parent_analyze_min_interval_minutes >= 0),
    -- Health warns when the last successful maintenance run is older than this.
    run_stale_after_minutes     integer NOT NULL DEFAULT 180 CHECK (run_stale_after_minutes >= 1),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO partition_policy DEFAULT VALUES;

-- One row per maintenance run that took the runner lock (runs skipped because another process held
-- it are not recorded). A run whose process died stays with finished_at NULL.
CREATE TABLE maintenance_runs (
    id          bigserial PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    -- Who ran it: 'server', 'cli', ... (free text, for DBAs).
    runner      text NOT NULL,
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'ok', 'failed')),
    -- Every action with its outcome, as JSON (see partition_jobs::ActionOutcome).
    actions     jsonb NOT NULL DEFAULT '[]',
    -- The first failure's message chain, when the run failed.
    error       text
);
-- Health and history read the latest runs.
CREATE INDEX maintenance_runs_started_idx ON maintenance_runs (started_at DESC);
