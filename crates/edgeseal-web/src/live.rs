//! Live readings over HTTP: `/api/v1/live` (server-sent events of readings
//! accepted here and received verified from peers), `/api/v1/live/latest`
//! (the newest of each stream) and `/api/v1/sensors` (each sensor's health).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use edgeseal_agent::live::Live;
use tokio::sync::broadcast;

pub fn router(live: Arc<Live>) -> Router {
    Router::new()
        .route("/api/v1/live", get(events))
        .route("/api/v1/live/latest", get(|State(l): State<Arc<Live>>| async move { Json(l.latest()) }))
        .route("/api/v1/sensors", get(|State(l): State<Arc<Live>>| async move { Json(l.sensors()) }))
        .with_state(live)
}

async fn events(State(live): State<Arc<Live>>) -> impl axum::response::IntoResponse {
    let rx = live.subscribe();
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(v) => Event::default().event("reading").data(serde_json::to_string(&*v).unwrap_or_default()),
            // A client too slow for the stream is told how many it missed.
            Err(broadcast::error::RecvError::Lagged(n)) => Event::default().event("skipped").data(n.to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(event), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
