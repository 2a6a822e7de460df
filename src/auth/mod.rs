//! Authentication: API keys for ingestion ([`keys`]), bearer tokens for reading ([`bearer`] for the
//! admin token, [`tokens`] for owners' signed tokens), owner passwords ([`password`]) and rate limits
//! ([`ratelimit`]). The client's address behind trusted proxies: [`crate::config::TrustedProxies`].

pub mod bearer;
pub mod keys;
pub mod password;
pub mod ratelimit;
pub mod tokens;
