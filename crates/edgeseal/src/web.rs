//! The agent's HTTP server, inside `up`: the REST API ([`crate::api`]), the
//! CloudSync-compatible API ([`crate::cloudsync`]) and `/api/v1/health`. Clients on this machine
//! (loopback) are served as the original served them; on any other address a
//! client must send the agent's token (`Authorization: Bearer <token>`, the
//! token in `<data dir>/api-token`, mode 0600).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Result, bail};
use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

/// Routes every listener serves (`apis` and health); `token` admits clients that are not on this machine.
pub fn router(device: String, apis: Router, token: Option<String>) -> Router {
    let health = get(move || {
        let device = device.clone();
        async move { Json(json!({"status": "ok", "device": device, "version": env!("CARGO_PKG_VERSION")})) }
    });
    Router::new()
        .route("/api/v1/health", health)
        .merge(apis)
        .layer(middleware::from_fn_with_state(Arc::new(token), guard))
}

/// Loopback clients pass; others need the token.
async fn guard(
    State(token): State<Arc<Option<String>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if peer.ip().is_loopback() {
        return next.run(req).await;
    }
    let given = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match (token.as_deref(), given) {
        (Some(t), Some(g)) if same(t.as_bytes(), g.trim().as_bytes()) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"Message": "from another machine this API needs the agent's token: \
                                    Authorization: Bearer <the token in the agent's data dir, api-token>"})),
        )
            .into_response(),
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binds each address and serves `router` on it until `stop`. A taken port is
/// reported and skipped; the addresses bound are returned. Addresses other than
/// loopback need `with_token` (the router was built with a token).
pub async fn start(
    listen: &[SocketAddr],
    router: Router,
    with_token: bool,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Vec<SocketAddr>> {
    let mut bound = Vec::new();
    for addr in listen {
        if !addr.ip().is_loopback() && !with_token {
            bail!("{addr} is not a loopback address, and the server has no API token to admit other machines");
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
        let (app, stop) = (router.clone().into_make_service_with_connect_info::<SocketAddr>(), stop.clone());
        tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
                error!("the web server stopped: {e}");
            }
        });
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    #[test]
    fn same() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd") && !super::same(b"abc", b"ab"));
    }
}
