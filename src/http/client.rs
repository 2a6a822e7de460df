//! The client's address at the HTTP edge, as the [`ClientIp`] extractor: the socket peer, or what a
//! trusted proxy forwarded ([`crate::config::proxies`], `STRATA_TRUSTED_PROXIES` and
//! `STRATA_TRUSTED_PROXY_HEADER`). Used for the per-address limits (auth attempts, unknown API keys)
//! and the stored `ip_address` of events.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::error::ApiError;
use super::AppState;

/// The client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The client's address for a request from `peer` with `headers`.
    pub fn of(s: &AppState, headers: &HeaderMap, peer: SocketAddr) -> ClientIp {
        let Some(name) = s.cfg.trusted_proxy_header.as_deref() else { return ClientIp(peer.ip().to_canonical()) };
        // A line that is not visible ASCII reads as one entry that is no address: the walk stops there.
        let lines: Vec<&str> = headers.get_all(name).iter().map(|v| v.to_str().unwrap_or("")).collect();
        ClientIp(s.cfg.trusted_proxies.client(peer.ip(), lines.into_iter()))
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<ClientIp, ApiError> {
        // The server (`super::serve`) gives every request its peer address.
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied() else {
            return Err(ApiError::internal("a request without its peer address"));
        };
        Ok(ClientIp::of(s, &parts.headers, peer))
    }
}
