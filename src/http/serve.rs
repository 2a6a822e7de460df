//! Serving connections. `axum::serve` runs hyper without a timer, so hyper's HTTP/1 header read
//! timeout never fires and a client dribbling its headers byte by byte (slowloris) keeps its
//! connection forever. This loop serves with hyper-util's connection builder instead, with a timer and
//! `header_read_timeout`, and keeps axum's graceful shutdown: stop accepting, let every connection
//! finish its in-flight request, then return.
//!
//! The header timeout also bounds how long an idle keep-alive connection may wait for its next
//! request. Slow bodies are bounded by the router's request timeout (the handler reads the body).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Pause after a failed `accept` (e.g. out of file descriptors), as `axum::serve` does.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` resolves, then waits for open connections to finish
/// their in-flight requests. A connection that has not sent a complete request head within
/// `header_timeout` is closed. Handlers see the peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // HTTP/1 only, as axum::serve with axum's default features.
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let service = router.clone().map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            req
        });
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Timeouts and resets land here: the client is gone, nothing to answer.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::debug!(connections = graceful.count(), "stopped accepting; waiting for open connections");
    graceful.shutdown().await;
}
