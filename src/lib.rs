//! Strata: a partition-aware time-series event store and analytics service on PostgreSQL.
//!
//! # Layout
//! One module per concern, each importing only modules listed above it (so
//! `python3 ../shared/tools/rust-cycles.py src` finds no cycle between them):
//! - [`config`]: typed configuration, defaults, env overrides, validation, and the types of setting
//!   values (durations, rate limits, trusted proxies with the client-address walk).
//! - [`metrics`]: Prometheus recorder, metric names, request middleware, scrape-time gauges.
//! - [`bus`]: the invalidation bus between instances (one Redis pub/sub channel) with its typed
//!   messages (generation bumps, key revocations), which the cache and key authentication follow.
//! - [`embedded`]: the private PostgreSQL cluster used when no `DATABASE_URL` is set.
//! - [`db`]: connection pool, migrations, partitions made at migrate time, server secrets.
//! - [`auth`]: API-key authentication with its in-process cache (revocations heard on the bus),
//!   bearer tokens, owner passwords, rate limiters (auth per IP, ingestion per API key, analytics
//!   per token) shared through Redis.
//! - [`accounts`]: owners, apps and API keys in storage (CLI and the accounts API).
//! - [`rollup`]: the rollups, in one room per concern: periods ([`rollup::tier::Tier`]),
//!   distinct-count sketches and aggregates, the writer's deltas, compaction, rebuilds from raw
//!   rows, the rollup side of erasure, trusted months. It imports nothing of `ingest` or `query`.
//! - [`query`]: analytics query planning (rollups for whole slots, raw rows for edges) and execution.
//! - [`cache`]: the analytics cache: one read-through facade over L1 moka and L2 Redis, with its
//!   single flight, entry encoding, app generations, query keys and warming in a file each.
//! - [`ingest`]: event validation and normalisation, user-agent parsing, the bounded queue and the
//!   group-commit writers that COPY events and write their rollup deltas in one transaction.
//! - [`privacy`]: erasing one end user's events (privacy requests), rollups recounted in the same
//!   transaction.
//! - [`jobs`]: the maintenance scheduler (partition-jobs under the runner lock, then rebuilding the
//!   rollups of the rows it moved).
//! - [`http`]: axum routers per area, the shared state, who is calling (`http::auth` extractors) and
//!   the one mapping from failures to JSON errors (`http::error`).
//! - [`app`]: building, running and draining the server.

pub mod accounts;
pub mod app;
pub mod auth;
pub mod bus;
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
