//! Live readings as they happen: what this agent accepts from its sensors and
//! what it receives, verified, from peers; the newest of each stream; and each
//! polled sensor's health. The web crate serves these as server-sent events
//! and JSON.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::times::format_ms;
use edgeseal_core::{DeviceId, Reading, Readings, StreamName, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Events kept for a slow listener before it skips ahead.
const BACKLOG: usize = 4096;
/// Recent values kept per stream for charts (what the store does not hold
/// yet): at most one a second, for the last hour.
const RECENT: usize = 3600;
const RECENT_EVERY_MS: i64 = 1000;

/// A reading's value as the live feed shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum LiveValue {
    /// With the original project's description of the value, where it has one.
    Scalar {
        value: f64,
        unit: String,
        label: Option<String>,
        description: Option<String>,
    },
    Blob {
        media_type: String,
        bytes: usize,
    },
}

/// One reading of the live feed (`/api/v1/live`, `/api/v1/live/latest`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct LiveReading {
    /// `local` (accepted here) or `peer` (received, verified).
    pub origin: String,
    pub peer: Option<String>,
    pub device: String,
    pub stream: String,
    pub ts_ms: i64,
    pub time: String,
    /// `accepted`; for a peer's: `live` (a signed live frame: authentic, not
    /// stored), `verified` (a stored batch), or `verified; N batch(es) before it missing`.
    pub status: String,
    #[serde(flatten)]
    pub value: LiveValue,
}

/// A polled sensor's health (`/api/v1/sensors`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SensorHealthView {
    pub sensor: String,
    /// `ok`, `failing` (its last read failed) or `waiting` (no read yet).
    pub health: String,
    pub interval_ms: u64,
    pub reads: u64,
    pub failures: u64,
    pub failed_in_row: u64,
    pub last_ok: Option<String>,
    pub last_error: Option<String>,
}

fn scalar(stream: &StreamName, value: f64, unit: &str, label: Option<&str>) -> LiveValue {
    let description = edgeseal_sensors::describe(stream.as_str(), value).map(str::to_string);
    LiveValue::Scalar { value, unit: unit.to_string(), label: label.map(str::to_string), description }
}

#[derive(Debug)]
pub struct Live {
    tx: broadcast::Sender<Arc<LiveReading>>,
    /// (device, stream) → the newest event.
    latest: Mutex<BTreeMap<(String, String), LiveReading>>,
    /// Each polled sensor's reads and failures, by its description.
    sensors: Mutex<BTreeMap<String, SensorHealth>>,
    /// (device, stream) → recent scalar values (ts, value), thinned to one a second.
    recent: Mutex<HashMap<(String, String), Recent>>,
}

/// A stream's recent values: (ms, value), oldest first.
type Recent = VecDeque<(i64, f64)>;

#[derive(Debug, Default)]
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
        Live {
            tx: broadcast::channel(BACKLOG).0,
            latest: Mutex::default(),
            sensors: Mutex::default(),
            recent: Mutex::default(),
        }
    }
}

impl Live {
    /// A reading this agent accepted (journaled; sealed and stored next).
    pub fn local(&self, device: DeviceId, r: &Reading) {
        let value = match &r.value {
            Value::Scalar { value, unit, label } => scalar(&r.stream, *value, unit, label.as_deref()),
            Value::Blob { media_type, data } => LiveValue::Blob { media_type: media_type.clone(), bytes: data.len() },
        };
        self.publish(device, &r.stream, r.ts, None, "accepted", value);
    }

    /// Readings of one stream this agent accepted, in order: each goes to the
    /// listeners; with none listening only the newest is kept, as `latest`.
    pub fn accepted(&self, device: DeviceId, readings: &[Reading]) {
        if let Some(first) = readings.first() {
            let values = readings.iter().filter_map(|r| match r.value {
                Value::Scalar { value, .. } => Some((r.ts, value)),
                Value::Blob { .. } => None,
            });
            self.remember(device, &first.stream, values);
        }
        let listened = self.tx.receiver_count() > 0;
        let skip = if listened { 0 } else { readings.len().saturating_sub(1) };
        for r in &readings[skip..] {
            self.local(device, r);
        }
    }

    /// A polled sensor's read: `Err` with what went wrong.
    pub fn sensor_read(&self, what: &str, interval: Duration, result: Result<(), String>, now_ms: i64) {
        let mut sensors = self.sensors.lock().unwrap_or_else(|p| p.into_inner());
        let h = sensors.entry(what.to_string()).or_default();
        h.interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
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

    /// Each polled sensor's health.
    pub fn sensors(&self) -> Vec<SensorHealthView> {
        let sensors = self.sensors.lock().unwrap_or_else(|p| p.into_inner());
        sensors
            .iter()
            .map(|(what, h)| {
                let health = match (h.failed_in_row, h.last_ok_ms) {
                    (0, Some(_)) => "ok",
                    (0, None) => "waiting",
                    _ => "failing",
                };
                SensorHealthView {
                    sensor: what.clone(),
                    health: health.into(),
                    interval_ms: h.interval_ms,
                    reads: h.reads,
                    failures: h.failures,
                    failed_in_row: h.failed_in_row,
                    last_ok: h.last_ok_ms.map(format_ms),
                    last_error: h.last_error.clone(),
                }
            })
            .collect()
    }

    /// Readings a peer shared, verified and opened; `status` says how they arrived ("verified", or after a gap).
    pub fn received(&self, peer: &str, device: DeviceId, stream: &StreamName, readings: &Readings, status: &str) {
        match readings {
            Readings::Scalar(b) => {
                self.remember(device, stream, b.ts.iter().copied().zip(b.values.iter().copied()));
                for (i, (&ts, &value)) in b.ts.iter().zip(&b.values).enumerate() {
                    let label = b.labels.get(i).cloned().flatten();
                    let v = scalar(stream, value, &b.unit, label.as_deref());
                    self.publish(device, stream, ts, Some(peer), status, v);
                }
            }
            Readings::Blob(b) => {
                for (&ts, item) in b.ts.iter().zip(&b.items) {
                    let v = LiveValue::Blob { media_type: b.media_type.clone(), bytes: item.len() };
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
        value: LiveValue,
    ) {
        let r = LiveReading {
            origin: if peer.is_some() { "peer" } else { "local" }.into(),
            peer: peer.map(str::to_string),
            device: device.to_string(),
            stream: stream.to_string(),
            ts_ms: ts,
            time: format_ms(ts),
            status: status.to_string(),
            value,
        };
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).insert((r.device.clone(), r.stream.clone()), r.clone());
        let _ = self.tx.send(Arc::new(r)); // nobody listening is fine
    }

    /// Keeps recent values of a stream, one a second at most, for [`Live::recent`].
    fn remember(&self, device: DeviceId, stream: &StreamName, values: impl Iterator<Item = (i64, f64)>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let kept = recent.entry((device.to_string(), stream.to_string())).or_default();
        for (ts, v) in values {
            if kept.back().is_none_or(|&(last, _)| ts >= last + RECENT_EVERY_MS) {
                if kept.len() == RECENT {
                    kept.pop_front();
                }
                kept.push_back((ts, v));
            }
        }
    }

    /// A stream's recent values after `after` (ms), oldest first: what a chart adds to the store's.
    pub fn recent(&self, device: &str, stream: &str, after: i64) -> Vec<(i64, f64)> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .get(&(device.to_string(), stream.to_string()))
            .map(|kept| kept.iter().copied().filter(|&(ts, _)| ts > after).collect())
            .unwrap_or_default()
    }

    /// The unit of a stream's newest reading, when it is a number.
    pub fn latest_unit(&self, device: &str, stream: &str) -> Option<String> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        match &latest.get(&(device.to_string(), stream.to_string()))?.value {
            LiveValue::Scalar { unit, .. } => Some(unit.clone()),
            LiveValue::Blob { .. } => None,
        }
    }

    /// The newest reading of every stream.
    pub fn latest(&self) -> Vec<LiveReading> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Every reading from now on (a receiver that falls more than a few thousand behind is told how many it missed).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveReading>> {
        self.tx.subscribe()
    }
}
