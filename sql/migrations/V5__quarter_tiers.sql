-- Quarter-hour rows (tier 4) of every event type together (event_type ''), so that time zones at
-- +5:30 or +5:45 (Asia/Kolkata, Asia/Kathmandu, Australia/Adelaide, America/St_Johns, ...) answer
-- their day, week and month buckets, whose starts fall on UTC quarter hours, from rollups instead of
-- reading raw rows at every bucket edge. Typed rows stay hourly (the per-type summary has raw edges
-- only at the two ends of its range).
--
-- The writer's deltas of '' are now keyed by their UTC quarter hour (typed deltas stay hourly); the
-- compactor merges a '' delta into its quarter, hour, day and month rows.
ALTER TABLE rollup_tiers DROP CONSTRAINT rollup_tiers_tier_check;
ALTER TABLE rollup_tiers ADD CONSTRAINT rollup_tiers_tier_check CHECK (tier BETWEEN 0 AND 4);

-- Months whose quarter rows are complete. Months holding events before this migration are not until
-- `strata rollups rebuild` fills them (meanwhile the planner reads them by whole hours, as before).
ALTER TABLE rollup_months ADD COLUMN quarters boolean NOT NULL DEFAULT false;
UPDATE rollup_months AS m SET quarters = NOT EXISTS (
    SELECT 1 FROM events
    WHERE created_at >= (m.month::timestamp AT TIME ZONE 'UTC')
      AND created_at < ((m.month + 1 * INTERVAL '1 month')::timestamp AT TIME ZONE 'UTC'));
ALTER TABLE rollup_months ALTER COLUMN quarters SET DEFAULT true;

-- Merged rows of every type together, read by (app, tier, range of starts): a day bucket outside UTC
-- is 24 hour rows, a 90-day timeline one range scan over this index instead of 2,160 probes of the
-- key index (which holds every type's row of each hour between them).
CREATE INDEX rollup_tiers_all_types ON rollup_tiers (app_id, tier, start) WHERE tier > 0 AND event_type = '';
