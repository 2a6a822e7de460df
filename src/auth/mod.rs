//! Authentication: API keys for ingestion ([`keys`]), bearer tokens for reading ([`bearer`] for the
//! admin token, [`tokens`] for owners' signed tokens), owner passwords ([`password`]), rate limits
//! ([`ratelimit`]) and the client's address behind trusted proxies ([`proxy`]).

pub mod bearer;
pub mod keys;
pub mod password;
pub mod proxy;
pub mod ratelimit;
pub mod tokens;
