-- Strata's foundation schema: tenants, keys, the partitioned events table, the idempotency table and
-- the rollups that the ingestion path maintains in the same transaction as the events it stores.

-- Server-wide secrets generated once (admin token, API-key HMAC secret, JWT secret) when the operator
-- did not set them, so every process that reaches this database (server, CLI) uses the same values.
CREATE TABLE server_secrets (
    name       text PRIMARY KEY,
    value      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Owners of apps. password_hash stays NULL for the bootstrap owner that CLI-created apps belong to;
-- such an owner cannot log in.
CREATE TABLE owners (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    name          text NOT NULL,
    password_hash text,
    role          text NOT NULL DEFAULT 'owner' CHECK (role IN ('owner', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Emails are compared case-insensitively: one owner per address.
CREATE UNIQUE INDEX owners_email_key ON owners (lower(email));

CREATE TABLE apps (
    id         uuid PRIMARY KEY,
    -- NULL only for apps made before any owner existed; the CLI assigns the bootstrap owner.
    owner_id   uuid REFERENCES owners (id),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Soft delete: a deleted app's keys are revoked at once; its events follow retention.
    deleted_at timestamptz
);
-- Listing an owner's apps.
CREATE INDEX apps_owner_idx ON apps (owner_id);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    app_id       uuid NOT NULL REFERENCES apps (id),
    name         text NOT NULL,
    -- HMAC-SHA256(server secret, full key): the key itself is shown once and never stored.
    key_hash     bytea NOT NULL,
    -- The first 12 characters ("ak_" + 9 hex) so owners can tell keys apart.
    key_prefix   text NOT NULL,
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    expires_at   timestamptz,
    -- Written in batches by the usage flusher, never per request.
    last_used_at timestamptz,
    usage_count  bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
-- Authentication looks a key up by its hash.
CREATE UNIQUE INDEX api_keys_hash_key ON api_keys (key_hash);
CREATE INDEX api_keys_app_idx ON api_keys (app_id);

-- Raw events, one partition per calendar month of event time (created_at, UTC), named
-- events_YYYY_MM, made with CREATE TABLE ... (LIKE events) + ATTACH PARTITION. No DEFAULT partition.
CREATE TABLE events (
    event_id      uuid NOT NULL,
    app_id        uuid NOT NULL,
    event_type    text NOT NULL,
    user_id       text,
    session_id    text,
    url           text,
    referrer      text,
    ip_address    inet,
    user_agent    text,
    browser       text,
    os            text,
    device        text,
    screen_width  integer,
    screen_height integer,
    metadata      jsonb,
    -- Event time (client timestamp corrected for clock skew), the partition key.
    created_at    timestamptz NOT NULL,
    -- When the server accepted the event.
    received_at   timestamptz NOT NULL
) PARTITION BY RANGE (created_at);

-- Every raw-table index costs ingest speed (TOOLCHAIN.md: 7 indexes cut COPY to a quarter), so only two:
-- (app_id, created_at): recent events of an app and the raw edges of rollup-planned queries.
CREATE INDEX events_app_time_idx ON events (app_id, created_at);
-- (app_id, user_id, created_at): one user's activity, which rollups cannot answer. Partial: anonymous
-- events never need it.
CREATE INDEX events_app_user_time_idx ON events (app_id, user_id, created_at) WHERE user_id IS NOT NULL;

-- Idempotency: (app, eventId) pairs stored within the dedupe window. A unique index on the partitioned
-- table would have to include created_at, which a retried event may not repeat exactly, so this small
-- unpartitioned table is the arbiter. Pruned after the window (see STRATA_DEDUPE_WINDOW).
CREATE TABLE event_ids (
    app_id      uuid NOT NULL,
    event_id    uuid NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, event_id)
);
-- Pruning old pairs by age.
CREATE INDEX event_ids_received_idx ON event_ids (received_at);

-- Hourly rollup of event counts per (app, UTC hour, event type, writer shard). The quarter-hour columns let
-- buckets in +5:30 / +5:45 zones be exact without reading raw rows: events = q0 + q1 + q2 + q3.
CREATE TABLE rollup_hourly (
    app_id     uuid NOT NULL,
    hour       timestamptz NOT NULL,
    event_type text NOT NULL,
    events     bigint NOT NULL,
    q0         bigint NOT NULL,
    q1         bigint NOT NULL,
    q2         bigint NOT NULL,
    q3         bigint NOT NULL,
    -- The writer that added these counts. Concurrent group-commit writers each upsert their own row,
    -- so they never wait on each other's hot-row locks until commit; readers sum over shards.
    shard      smallint NOT NULL DEFAULT 0,
    -- Led by (app_id, hour): every rollup read is one app over a time range.
    PRIMARY KEY (app_id, hour, event_type, shard)
);

-- Hourly breakdown counts per dimension (device, browser, os) value, for summaries.
CREATE TABLE rollup_hourly_dims (
    app_id     uuid NOT NULL,
    hour       timestamptz NOT NULL,
    event_type text NOT NULL,
    dim        text NOT NULL CHECK (dim IN ('device', 'browser', 'os')),
    -- '' stands for "unknown" (a NULL cannot be part of the primary key).
    value      text NOT NULL,
    events     bigint NOT NULL,
    -- As in rollup_hourly: one row per writer, summed by readers.
    shard      smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, hour, event_type, dim, value, shard)
);

-- Months whose rollups are complete (maintained by ingestion since the month existed, or rebuilt by
-- `strata rollups rebuild`). The planner never trusts rollups of a month that is not listed here.
CREATE TABLE rollup_months (
    month        date PRIMARY KEY,
    complete     boolean NOT NULL DEFAULT true,
    rebuilt_at   timestamptz
);
