//! Integration tests against a real PostgreSQL (`PARTITION_JOBS_TEST_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`): each test makes its own database with the
//! V1 and V2 migrations applied, and drops it at the end.

mod helpers;

mod ensure;
mod maintenance;
mod retention;
