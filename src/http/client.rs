//! The client's address at the HTTP edge: the socket peer, or what a trusted proxy forwarded
//! ([`crate::config::proxies`], `STRATA_TRUSTED_PROXIES` and `STRATA_TRUSTED_PROXY_HEADER`). Used for the
//! per-address limits (auth attempts, unknown API keys) and the stored `ip_address` of events.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use super::AppState;

/// The client's address for a request from `peer` with `headers`.
pub fn client_ip(s: &AppState, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    let Some(name) = s.cfg.trusted_proxy_header.as_deref() else { return peer.ip().to_canonical() };
    // A line that is not visible ASCII reads as one entry that is no address: the walk stops there.
    let lines: Vec<&str> = headers.get_all(name).iter().map(|v| v.to_str().unwrap_or("")).collect();
    s.cfg.trusted_proxies.client(peer.ip(), lines.into_iter())
}
