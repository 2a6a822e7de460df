-- Multi-tier rollups: event counts, distinct-count sketches of users and sessions, and device / browser /
-- os breakdowns per (app, UTC hour | day | month, event type). Dashboards ask for days, weeks and months
-- over long ranges: a 90-day daily timeline reads 90 day rows instead of 2,160 hours x every event type,
-- and distinct users come from mergeable sketches (src/query/sketch.rs) instead of COUNT(DISTINCT) over
-- raw rows.
--
-- Tier 0 rows are the ingestion writer's deltas: one row per (app, hour, event type) per group commit,
-- plain inserts (no hot row, no lock between writers). A compactor merges them into the one row per
-- key of tiers 1 (hour), 2 (day) and 3 (month) and deletes them, in one transaction, so every delta is
-- counted either as itself or in all three merged tiers, never both. Readers add merged rows and the
-- remaining deltas of their range.
CREATE TABLE rollup_tiers (
    app_id     uuid NOT NULL,
    tier       smallint NOT NULL CHECK (tier BETWEEN 0 AND 3),
    -- The UTC hour (tiers 0, 1), day (2) or month (3).
    start      timestamptz NOT NULL,
    -- '' is every event type together (timelines without a type filter, overview totals).
    event_type text NOT NULL,
    events     bigint NOT NULL,
    -- Sketches: sorted distinct 32-bit hashes (4 bytes each), or a tagged dense HyperLogLog.
    users      bytea NOT NULL,
    sessions   bytea NOT NULL,
    -- {"device": {value: events}, "browser": {...}, "os": {...}}; '' is unknown. Empty on '' rows.
    dims       jsonb NOT NULL DEFAULT '{}'
);
-- Merged rows: one per key; every read of tiers 1-3 probes (app, tier, start) and filters the type in
-- the index.
CREATE UNIQUE INDEX rollup_tiers_key ON rollup_tiers (app_id, tier, start, event_type) WHERE tier > 0;
-- Deltas: read by (app, hour range), and scanned whole by the compactor.
CREATE INDEX rollup_tiers_deltas ON rollup_tiers (app_id, start) WHERE tier = 0;
-- Sketches are hash sets or registers that do not compress; skip the attempt.
ALTER TABLE rollup_tiers ALTER COLUMN users SET STORAGE EXTERNAL, ALTER COLUMN sessions SET STORAGE EXTERNAL;

-- Months whose tiers are complete. Months holding events before this migration are not (their tiers
-- are empty) until `strata rollups rebuild` fills them; meanwhile the planner reads those months raw.
-- Months created from now on are complete from the start, as ingestion maintains their tiers.
ALTER TABLE rollup_months ADD COLUMN tiers boolean NOT NULL DEFAULT false;
UPDATE rollup_months AS m SET tiers = NOT EXISTS (
    SELECT 1 FROM events
    WHERE created_at >= (m.month::timestamp AT TIME ZONE 'UTC')
      AND created_at < ((m.month + 1 * INTERVAL '1 month')::timestamp AT TIME ZONE 'UTC'));
ALTER TABLE rollup_months ALTER COLUMN tiers SET DEFAULT true;
