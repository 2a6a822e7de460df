//! Authentication: API keys for ingestion ([`keys`]) and bearer tokens for reading ([`bearer`]).

pub mod bearer;
pub mod keys;
