//! Integration tests: the real server on port 0, real PostgreSQL, one database per test.

mod accounts;
mod analytics;
mod cache;
mod helpers;
mod hostile;
mod ingest;
mod lifecycle;
mod limits;
mod metrics;
mod openapi;
mod oracle;
mod outage;
mod oversized;
mod owners;
mod partitions;
mod privacy;
mod reliability;
mod requests;
mod rollups;
mod tiers;
mod wait;
