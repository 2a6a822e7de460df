//! Strata: a partition-aware time-series event store and analytics service on PostgreSQL.
//!
//! # Layout
//! - [`config`]: typed configuration, defaults, env overrides, validation.
//! - [`db`]: connection pool, migrations, partitions made at migrate time, server secrets.
//! - [`embedded`]: the private PostgreSQL cluster used when no `DATABASE_URL` is set.
//! - [`accounts`]: owners, apps and API keys in storage (CLI and the accounts API).
//! - [`auth`]: API-key authentication with its in-process cache, bearer tokens, owner passwords,
//!   rate limits (auth per IP, ingestion per API key, analytics per token) shared through Redis.
//! - [`cache`]: the analytics cache: L1 moka, L2 Redis, one read-through facade with single flight.
//! - [`ingest`]: event validation and normalisation, user-agent parsing, the bounded queue and the
//!   group-commit writers that COPY events and upsert rollups in one transaction.
//! - [`http`]: axum routers per area, the shared state and the JSON error type.
//! - [`jobs`]: the maintenance scheduler (partition-jobs under the runner lock, rollup repair).
//! - [`query`]: analytics query planning (rollups for whole slots, raw rows for edges) and execution.
//! - [`metrics`]: Prometheus recorder, metric names, request middleware, scrape-time gauges.
//! - [`privacy`]: erasing one end user's events with their rollups (privacy requests).
//! - [`rollup`]: the rollups (hourly and multi-tier, with distinct-count sketches): writer deltas,
//!   compaction, rebuilds from raw rows.
//! - [`app`]: building, running and draining the server.

pub mod accounts;
pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod db;
pub mod embedded;
pub mod http;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod privacy;
pub mod query;
pub mod rollup;
