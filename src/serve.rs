//! The accept loop both listeners run: hyper's HTTP/1 server with the
//! limits `axum::serve` does not expose.
//!
//! A stranger can open connections and send half a request, or nothing,
//! and keep them open: without limits each holds a file descriptor forever,
//! and enough of them starve the process of sockets for real calls. So:
//!
//! - hyper's header-read timer runs on every connection, from the moment it
//!   waits for a request head (the first one, and each one after a keep-alive
//!   response): a client that has not sent a whole head by then is dropped;
//! - at most `max_connections` HTTP connections are open at once; one more
//!   is accepted and closed at once, so the kernel's backlog never fills
//!   with connections nobody serves;
//! - an upgraded connection (a Media Stream) leaves this count when it
//!   upgrades: from then on the server's pending-stream budget and
//!   `max_calls` bound it.
//!
//! Body size and body time are per route (see the router in `server`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long to wait before accepting again after an accept error that is
/// not one connection's (the process is out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request head must arrive whole within this.
    pub header_read_timeout: Duration,
    /// Open HTTP connections beyond which new ones are closed at once.
    pub max_connections: usize,
    /// `TCP_NODELAY` on accepted sockets: the Twilio port sends small
    /// audio frames that must not wait for Nagle.
    pub nodelay: bool,
}

/// Serves `router` on `listener` until `stop` fires, then lets the requests
/// in flight finish (keep-alive connections are closed after their current
/// response). `refused` is called once per connection turned away at the cap.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    refused: impl Fn() + Send + 'static,
    stop: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            // A connection reset before we got to it: that connection's
            // problem, not the listener's.
            Err(e) if is_connection_error(&e) => continue,
            // Out of file descriptors, most likely: accepting again at once
            // would spin.
            Err(e) => {
                tracing::error!(error = %e, "cannot accept connections");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused();
            drop(tcp);
            continue;
        };
        if limits.nodelay {
            let _ = tcp.set_nodelay(true);
        }
        let conn = http
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone()))
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            // A timed-out head, a reset, a malformed request: hyper has
            // already answered or closed; nothing to add per connection.
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
