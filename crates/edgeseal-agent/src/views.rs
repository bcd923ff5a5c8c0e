//! What the service answers: typed views with the JSON field names that
//! `--json`, the REST API and the control socket have always used. A renamed
//! field is a compile error in every printer and page, not a blank cell.

use std::collections::BTreeMap;

use crate::times::format_ms;
use base64::Engine as _;
use edgeseal_core::chain::Finding;
use edgeseal_core::keys::PublicIdentity;
use edgeseal_core::{Readings, StreamName};
use edgeseal_sensors::batcher::Policy;
use edgeseal_store::local::PeerRow;
use serde::{Deserialize, Serialize};

use crate::batching::interval_text;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// This agent's public identity (`id --json`, `GET /api/v1/identity`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct IdentityView {
    pub name: String,
    pub device_id: String,
    pub fingerprint: String,
    pub ed25519: String,
    pub x25519: String,
}

impl IdentityView {
    pub fn new(name: &str, public: &PublicIdentity) -> IdentityView {
        IdentityView {
            name: name.to_string(),
            device_id: public.device_id().to_string(),
            fingerprint: public.fingerprint(),
            ed25519: b64(&public.ed25519),
            x25519: b64(&public.x25519),
        }
    }
}

/// One stream: what the store holds and, for this agent's own, what waits locally.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct StreamView {
    pub stream: String,
    pub device: String,
    pub own: bool,
    pub batches: u64,
    pub readings: u64,
    pub first: Option<String>,
    pub last: Option<String>,
    pub head_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_readings: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_batches: Option<u64>,
}

/// A grant, as seen from the peer's row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "direction", rename_all = "lowercase")]
pub enum GrantView {
    Given {
        stream: String,
        from: String,
        /// The end of the granted time, when the grant has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        revoked: bool,
        published: bool,
    },
    Received {
        stream: String,
        revoked: bool,
    },
}

impl GrantView {
    pub fn stream(&self) -> &str {
        match self {
            GrantView::Given { stream, .. } | GrantView::Received { stream, .. } => stream,
        }
    }

    pub fn revoked(&self) -> bool {
        match self {
            GrantView::Given { revoked, .. } | GrantView::Received { revoked, .. } => *revoked,
        }
    }
}

/// A paired peer with the grants each way (`peers --json`, `GET /api/v1/peers`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PeerView {
    pub name: String,
    pub device_id: String,
    pub fingerprint: String,
    pub ed25519: String,
    pub x25519: String,
    pub paired: String,
    pub grants: Vec<GrantView>,
}

impl PeerView {
    pub fn new(p: &PeerRow, grants: Vec<GrantView>) -> PeerView {
        PeerView {
            name: p.name.clone(),
            device_id: p.device.to_string(),
            fingerprint: p.public.fingerprint(),
            ed25519: b64(&p.public.ed25519),
            x25519: b64(&p.public.x25519),
            paired: format_ms(p.paired_ms),
            grants,
        }
    }
}

/// One reading as `fetch --format json` prints it and the API serves it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ReadingView {
    Scalar { stream: String, time: String, ts_ms: i64, value: f64, unit: String, label: Option<String> },
    Blob { stream: String, time: String, ts_ms: i64, media_type: String, data_base64: String },
}

impl ReadingView {
    /// Every reading of a batch whose time passes `keep`.
    pub fn of_batch(stream: &StreamName, r: &Readings, keep: impl Fn(i64) -> bool) -> Vec<ReadingView> {
        let s = stream.as_str();
        match r {
            Readings::Scalar(b) => (0..b.ts.len())
                .filter(|&i| keep(b.ts[i]))
                .map(|i| ReadingView::Scalar {
                    stream: s.to_string(),
                    time: format_ms(b.ts[i]),
                    ts_ms: b.ts[i],
                    value: b.values[i],
                    unit: b.unit.clone(),
                    label: b.labels.get(i).cloned().flatten(),
                })
                .collect(),
            Readings::Blob(b) => (0..b.ts.len())
                .filter(|&i| keep(b.ts[i]))
                .map(|i| ReadingView::Blob {
                    stream: s.to_string(),
                    time: format_ms(b.ts[i]),
                    ts_ms: b.ts[i],
                    media_type: b.media_type.clone(),
                    data_base64: b64(&b.items[i]),
                })
                .collect(),
        }
    }

    pub fn ts_ms(&self) -> i64 {
        match self {
            ReadingView::Scalar { ts_ms, .. } | ReadingView::Blob { ts_ms, .. } => *ts_ms,
        }
    }

    pub fn time(&self) -> &str {
        match self {
            ReadingView::Scalar { time, .. } | ReadingView::Blob { time, .. } => time,
        }
    }

    /// This reading as a line of [`CSV_HEADER`]'s columns (no newline).
    pub fn csv_line(&self) -> String {
        match self {
            ReadingView::Scalar { stream, time, ts_ms, value, unit, label } => {
                format!("{stream},{time},{ts_ms},{value},{},{},,", csv(unit), csv(label.as_deref().unwrap_or("")))
            }
            ReadingView::Blob { stream, time, ts_ms, media_type, data_base64 } => {
                format!("{stream},{time},{ts_ms},,,,{},{data_base64}", csv(media_type))
            }
        }
    }
}

/// The columns of `fetch --format csv` and of the API's CSV download.
pub const CSV_HEADER: &str = "stream,time,ts_ms,value,unit,label,media_type,data_base64";

/// A CSV field, quoted when it must be (RFC 4180).
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// One batch of a retrieved range and how it verified.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BatchView {
    pub seq: u64,
    pub first: String,
    pub last: String,
    pub status: String,
}

/// Where a finding points.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum FindingAt {
    Moved { seq: u64, original_seq: u64, original_stream: String, original_device: String },
    Stored { seq: u64, stored_as: u64 },
    Seq { seq: u64 },
    Gap { from: u64, to: u64 },
    Truncated { last: Option<u64>, checkpoint: u64 },
    Rollback { store_head: Option<u64>, seen: u64 },
}

/// A verification finding: its kind, its text, and where it points.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FindingView {
    pub kind: String,
    pub message: String,
    #[serde(flatten)]
    pub at: FindingAt,
}

impl From<&Finding> for FindingView {
    fn from(f: &Finding) -> FindingView {
        let at = match f {
            Finding::Tampered { row_seq, .. } | Finding::Foreign { row_seq, .. } => FindingAt::Seq { seq: *row_seq },
            Finding::Moved { row_seq, seq, stream, device } => FindingAt::Moved {
                seq: *row_seq,
                original_seq: *seq,
                original_stream: stream.to_string(),
                original_device: device.to_string(),
            },
            Finding::Duplicate { seq, row_seq } | Finding::Reordered { seq, row_seq } => {
                FindingAt::Stored { seq: *seq, stored_as: *row_seq }
            }
            Finding::Conflict { seq }
            | Finding::ChainBroken { seq }
            | Finding::Fork { seq }
            | Finding::BadCheckpoint { seq }
            | Finding::Unsigned { seq }
            | Finding::RangeEdgeMissing { seq, .. }
            | Finding::RetentionMismatch { seq }
            | Finding::BadRetention { from: seq }
            | Finding::CheckpointsRemoved { seen: seq, .. } => FindingAt::Seq { seq: *seq },
            Finding::Gap { from, to } => FindingAt::Gap { from: *from, to: *to },
            Finding::TruncatedTail { last, checkpoint } => {
                FindingAt::Truncated { last: *last, checkpoint: *checkpoint }
            }
            Finding::Rollback { store_head, seen, .. } => FindingAt::Rollback { store_head: *store_head, seen: *seen },
        };
        FindingView { kind: f.kind().to_string(), message: f.to_string(), at }
    }
}

/// A time range of a stream, verified and opened (`GET …/readings`, the storage page).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ReadView {
    pub stream: String,
    pub device: String,
    pub verified: bool,
    pub batches: Vec<BatchView>,
    pub findings: Vec<FindingView>,
    pub readings: Vec<ReadingView>,
    pub unreadable_batches: usize,
    /// False for a peer's stream this agent was never granted: its batches verify, none opens.
    #[serde(default = "yes")]
    pub granted: bool,
    /// Batches sealed before (or after) the time this agent was granted.
    #[serde(default)]
    pub outside_grant_batches: usize,
}

fn yes() -> bool {
    true
}

/// One stream's audit (`verify --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct StreamAudit {
    pub stream: String,
    pub device: String,
    pub batches: usize,
    pub verified: usize,
    pub head_seq: Option<u64>,
    /// Where the stream starts: 0, or the first batch a signed retention record keeps.
    pub start: u64,
    pub ok: bool,
    pub findings: Vec<FindingView>,
}

/// Every audited stream of a device (`verify --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct VerifyView {
    pub ok: bool,
    pub device: String,
    pub streams: Vec<StreamAudit>,
}

/// A batch policy as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PolicyView {
    pub count: usize,
    pub interval: String,
}

impl From<Policy> for PolicyView {
    fn from(p: Policy) -> PolicyView {
        PolicyView { count: p.count, interval: interval_text(p) }
    }
}

/// The batch policy, with the streams that have their own (`GET /api/v1/batching`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BatchingView {
    pub count: usize,
    pub interval: String,
    pub per_stream: BTreeMap<String, PolicyView>,
}

/// What "store now" sealed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct StoreNowView {
    pub batches: usize,
    pub readings: usize,
}

/// A grant given (`POST …/grants`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct GrantedView {
    pub peer: String,
    pub device_id: String,
    pub stream: String,
    pub epoch: u32,
}

/// Grants revoked (`DELETE …/grants/{stream}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RevokedView {
    pub peer: String,
    pub device_id: String,
    pub revoked: Vec<String>,
}

/// A stream's key rotated (`POST …/rotate`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RotatedView {
    pub stream: String,
    pub epoch: u32,
}

/// Where a pairing started from the UI or API stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum PairingView {
    #[default]
    Idle,
    /// Showing `code` until `until`.
    Waiting {
        code: String,
        until: String,
    },
    Paired {
        peer: PeerView,
    },
    Failed {
        error: String,
    },
}
