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
use edgeseal_agent::live::{Live, LiveReading, SensorHealthView};
use tokio::sync::broadcast;

pub fn router(live: Arc<Live>) -> Router {
    Router::new()
        .route("/api/v1/live", get(events))
        .route("/api/v1/live/latest", get(latest))
        .route("/api/v1/sensors", get(sensors))
        .with_state(live)
}

/// The newest reading of every stream, local and received.
#[utoipa::path(get, path = "/api/v1/live/latest", tag = "live",
    responses((status = 200, description = "the readings", body = Vec<LiveReading>)))]
pub async fn latest(State(l): State<Arc<Live>>) -> Json<Vec<LiveReading>> {
    Json(l.latest())
}

/// Each polled sensor's health (ok, failing, waiting), reads, failures and last error.
#[utoipa::path(get, path = "/api/v1/sensors", tag = "live",
    responses((status = 200, description = "the sensors", body = Vec<SensorHealthView>)))]
pub async fn sensors(State(l): State<Arc<Live>>) -> Json<Vec<SensorHealthView>> {
    Json(l.sensors())
}

/// Server-sent events: `reading` (a [`LiveReading`] as JSON) for every reading
/// accepted here (status accepted) or received from a peer (live or
/// verified); `skipped` (a count) when a slow client missed some.
#[utoipa::path(get, path = "/api/v1/live", tag = "live",
    responses((status = 200, description = "an event stream; each `reading` event's data is a LiveReading",
               content_type = "text/event-stream", body = String)))]
pub async fn events(State(live): State<Arc<Live>>) -> impl axum::response::IntoResponse {
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
