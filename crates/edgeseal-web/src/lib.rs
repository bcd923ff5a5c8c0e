//! The agent's HTTP side, as an axum [`Router`] over the agent's
//! [`Service`]: the web UI ([`ui`]), the REST API and its OpenAPI document
//! ([`api`]), live events ([`live`]) and the Home Edge CloudSync API
//! ([`cloudsync`]), behind one access guard ([`access`]). The caller binds
//! the listeners and hands them to [`serve`], so tests bind port 0 or call
//! the router in process.

#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod chart;
pub mod cloudsync;
mod error;
pub mod live;
pub mod metrics;
pub mod tls;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use edgeseal_agent::live::Live;
use edgeseal_agent::runtime::Stats;
use edgeseal_agent::service::Service;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::error;

pub use access::Access;
pub use cloudsync::CloudSync;
pub use error::{ApiError, ErrorBody};

/// What the routes serve.
#[derive(Debug, Clone)]
pub struct State {
    pub service: Arc<Service>,
    /// Readings as the agent accepts and receives them.
    pub live: Arc<Live>,
    pub access: Arc<Access>,
    /// The CloudSync API's connections to brokers.
    pub cloudsync: Arc<CloudSync>,
    /// The agent's counters, for `/metrics`.
    pub stats: Arc<Stats>,
    /// The served certificate's SHA-256, over HTTPS (the sharing page shows it).
    pub tls_fingerprint: Option<String>,
}

/// Every route of the agent's server, behind the access guard.
pub fn router(state: State) -> Router {
    let ui = Arc::new(ui::Ui::new(
        state.service.clone(),
        state.live.clone(),
        state.access.clone(),
        state.tls_fingerprint.clone(),
    ));
    let metrics = metrics::Metrics::new(state.service.clone(), state.stats.clone());
    let apis = state
        .cloudsync
        .clone()
        .router()
        .merge(api::router(state.service.clone()))
        .merge(live::router(state.live.clone()))
        .merge(metrics::router(metrics.clone()))
        .merge(chart::router(state.service.clone(), state.live.clone()))
        .merge(ui::router(ui));
    access::guarded(state.service.device().to_string(), apis.layer(axum::middleware::from_fn(zone)), state.access)
        .layer(axum::middleware::from_fn_with_state(metrics, metrics::count))
}

/// A request's `?tz=ZONE`: its times are shown in that zone (the agent's
/// `ui.time_zone` otherwise); a zone that does not exist is a 400.
async fn zone(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    #[derive(serde::Deserialize)]
    struct Tz {
        tz: Option<String>,
    }
    let asked = axum::extract::Query::<Tz>::try_from_uri(request.uri()).ok().and_then(|q| q.0.tz);
    let Some(name) = asked else { return next.run(request).await };
    match edgeseal_agent::times::Zone::parse(&name) {
        Ok(z) => edgeseal_agent::times::in_zone(z, next.run(request)).await,
        Err(e) => ApiError(edgeseal_agent::Error::bad(format!("tz: {e}"))).into_response(),
    }
}
/// Serves `router` on every listener until `shutdown`, then lets open
/// requests finish (over HTTPS when `tls` is given). Returns when every listener has stopped.
pub async fn serve(
    listeners: Vec<TcpListener>,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) {
    let mut servers = Vec::new();
    for listener in listeners {
        if let Some(config) = &tls {
            servers.push(tokio::spawn(tls::serve(listener, router.clone(), config.clone(), shutdown.clone())));
            continue;
        }
        let app = router.clone().into_make_service_with_connect_info::<SocketAddr>();
        let stop = shutdown.clone();
        servers.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
                error!("the web server stopped: {e}");
            }
        }));
    }
    for s in servers {
        let _ = s.await;
    }
}
