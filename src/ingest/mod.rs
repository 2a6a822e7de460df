//! The ingestion path: [`event`] validates and normalises, [`ua`] parses user agents, [`writer`]
//! queues and group-commits, [`store`] writes one transaction (COPY + rollup deltas), [`dedupe`]
//! prunes the idempotency table, [`wire`] reads bodies without a JSON tree of the whole body.

pub mod dedupe;
pub mod event;
pub mod store;
pub mod ua;
pub mod wire;
pub mod writer;
