//! The agent's HTTP server, inside `up`: for now the CloudSync-compatible API
//! ([`crate::cloudsync`]) and `/api/v1/health`. Loopback only: serving other
//! machines needs the API token, which does not exist yet.

use std::net::SocketAddr;

use anyhow::{Result, bail};
use axum::Json;
use axum::Router;
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

/// Routes every listener serves.
pub fn router(device: String, cloudsync: Router) -> Router {
    let health = get(move || {
        let device = device.clone();
        async move { Json(json!({"status": "ok", "device": device, "version": env!("CARGO_PKG_VERSION")})) }
    });
    Router::new().route("/api/v1/health", health).merge(cloudsync)
}

/// Binds each address and serves `router` on it until `stop`. A taken port is
/// reported and skipped; the addresses bound are returned.
pub async fn start(
    listen: &[SocketAddr],
    router: Router,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Vec<SocketAddr>> {
    let mut bound = Vec::new();
    for addr in listen {
        if !addr.ip().is_loopback() {
            bail!(
                "web.listen {addr} is not a loopback address: serving other machines needs an API token, which \
                 edgeseal does not have yet; listen on 127.0.0.1 (and tunnel, e.g. ssh -L) for now"
            );
        }
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                eprintln!("warning: {addr} is already in use, so the web server does not listen there (web.listen)");
                continue;
            }
            Err(e) => bail!("the web server cannot listen on {addr}: {e}"),
        };
        bound.push(listener.local_addr()?);
        let (router, stop) = (router.clone(), stop.clone());
        tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await {
                error!("the web server stopped: {e}");
            }
        });
    }
    Ok(bound)
}
