//! Live readings for the HTTP server: what this agent accepts from its sensors
//! and what it receives, verified, from peers, as it happens
//! (`/api/v1/live`, server-sent events) and the newest of each stream
//! (`/api/v1/live/latest`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use edgeseal_core::{DeviceId, Reading, Readings, StreamName, Value};
use serde_json::json;
use tokio::sync::broadcast;

use crate::timefmt::format_ms;

/// Events kept for a slow listener before it skips ahead.
const BACKLOG: usize = 4096;

/// A scalar reading's fields, with the original project's description of its value.
fn scalar(stream: &StreamName, value: f64, unit: &str, label: Option<&str>) -> serde_json::Value {
    let description = edgeseal_sensors::describe(stream.as_str(), value);
    json!({"value": value, "unit": unit, "label": label, "description": description})
}

pub struct Live {
    tx: broadcast::Sender<Arc<serde_json::Value>>,
    /// (device, stream) → the newest event.
    latest: Mutex<BTreeMap<(String, String), serde_json::Value>>,
    /// Each polled sensor's reads and failures, by its description.
    sensors: Mutex<BTreeMap<String, SensorHealth>>,
}

#[derive(Default)]
struct SensorHealth {
    interval_ms: u64,
    reads: u64,
    failures: u64,
    failed_in_row: u64,
    last_ok_ms: Option<i64>,
    last_error: Option<String>,
}

impl Default for Live {
    fn default() -> Self {
        Live { tx: broadcast::channel(BACKLOG).0, latest: Mutex::new(BTreeMap::new()), sensors: Mutex::default() }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("listeners", &self.tx.receiver_count()).finish()
    }
}

impl Live {
    /// A reading this agent accepted (journaled; sealed and stored next).
    pub fn local(&self, device: DeviceId, r: &Reading) {
        let value = match &r.value {
            Value::Scalar { value, unit, label } => scalar(&r.stream, *value, unit, label.as_deref()),
            Value::Blob { media_type, data } => json!({"media_type": media_type, "bytes": data.len()}),
        };
        self.publish(device, &r.stream, r.ts, None, "accepted", value);
    }

    /// A polled sensor's read: `Err` with what went wrong.
    pub fn sensor_read(&self, what: &str, interval: Duration, result: Result<(), String>, now_ms: i64) {
        let mut sensors = self.sensors.lock().unwrap_or_else(|p| p.into_inner());
        let h = sensors.entry(what.to_string()).or_default();
        h.interval_ms = interval.as_millis() as u64;
        match result {
            Ok(()) => {
                h.reads += 1;
                h.failed_in_row = 0;
                h.last_ok_ms = Some(now_ms);
            }
            Err(e) => {
                h.failures += 1;
                h.failed_in_row += 1;
                h.last_error = Some(e);
            }
        }
    }

    /// Each polled sensor: `ok`, `failing` (its last read failed) or `waiting` (no read yet).
    pub fn sensors(&self) -> Vec<serde_json::Value> {
        let sensors = self.sensors.lock().unwrap_or_else(|p| p.into_inner());
        sensors
            .iter()
            .map(|(what, h)| {
                let health = match (h.failed_in_row, h.last_ok_ms) {
                    (0, Some(_)) => "ok",
                    (0, None) => "waiting",
                    _ => "failing",
                };
                json!({"sensor": what, "health": health, "interval_ms": h.interval_ms, "reads": h.reads,
                       "failures": h.failures, "failed_in_row": h.failed_in_row,
                       "last_ok": h.last_ok_ms.map(format_ms), "last_error": h.last_error})
            })
            .collect()
    }

    /// Readings a peer shared, verified and opened; `status` says how they arrived ("verified", or after a gap).
    pub fn received(&self, peer: &str, device: DeviceId, stream: &StreamName, readings: &Readings, status: &str) {
        match readings {
            Readings::Scalar(b) => {
                for (i, (&ts, &value)) in b.ts.iter().zip(&b.values).enumerate() {
                    let label = b.labels.get(i).cloned().flatten();
                    let v = scalar(stream, value, &b.unit, label.as_deref());
                    self.publish(device, stream, ts, Some(peer), status, v);
                }
            }
            Readings::Blob(b) => {
                for (&ts, item) in b.ts.iter().zip(&b.items) {
                    let v = json!({"media_type": b.media_type, "bytes": item.len()});
                    self.publish(device, stream, ts, Some(peer), status, v);
                }
            }
        }
    }

    fn publish(
        &self,
        device: DeviceId,
        stream: &StreamName,
        ts: i64,
        peer: Option<&str>,
        status: &str,
        value: serde_json::Value,
    ) {
        let mut v = json!({
            "origin": if peer.is_some() { "peer" } else { "local" }, "peer": peer,
            "device": device.to_string(), "stream": stream.as_str(), "ts_ms": ts, "time": format_ms(ts), "status": status,
        });
        if let (Some(o), Some(extra)) = (v.as_object_mut(), value.as_object()) {
            o.extend(extra.clone());
        }
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((device.to_string(), stream.to_string()), v.clone());
        let _ = self.tx.send(Arc::new(v)); // nobody listening is fine
    }

    /// The newest reading of every stream.
    pub fn latest(&self) -> Vec<serde_json::Value> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    pub fn router(self: Arc<Self>) -> Router {
        let latest = {
            let live = self.clone();
            get(move || {
                let v = live.latest();
                async move { Json(v) }
            })
        };
        let sensors = {
            let live = self.clone();
            get(move || {
                let v = live.sensors();
                async move { Json(v) }
            })
        };
        let stream = get(move || {
            let rx = self.tx.subscribe();
            async move {
                let events = futures_util::stream::unfold(rx, |mut rx| async move {
                    let event = match rx.recv().await {
                        Ok(v) => Event::default().event("reading").data(v.to_string()),
                        // A client too slow for the stream is told how many it missed.
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            Event::default().event("skipped").data(n.to_string())
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    Some((Ok::<_, Infallible>(event), rx))
                });
                Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            }
        });
        Router::new()
            .route("/api/v1/live", stream)
            .route("/api/v1/live/latest", latest)
            .route("/api/v1/sensors", sensors)
    }
}
