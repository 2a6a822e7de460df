//! Integration tests: the real server on port 0, real PostgreSQL, one database per test.

mod helpers;
mod ingest;
mod lifecycle;
mod requests;
mod rollups;
