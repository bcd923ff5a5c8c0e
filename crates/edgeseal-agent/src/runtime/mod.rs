//! The running agent, in components that `up` spawns, each a value with
//! `async fn run(self, shutdown: CancellationToken)`:
//!
//! ```text
//! sources ──mpsc──> Sealer: check → journal (state.db) → batcher → seal → outbox (state.db)
//!                                                                      │ notify
//!            Drainer: outbox → store, remember heads, sign checkpoints ┘
//!            Publisher: publish queue → broker (and grants)
//!            Handover (store = "broker", instead of the drainer): what ingest
//!              says it stored leaves the outbox; checkpoints → broker
//!            FrameSender: each journal commit of a granted stream → signed live frame → broker
//!            Receiver: broker → inbox (verify, order, open) → outbox
//!            Lcd: newest values and the agent's state on the Grove LCD
//! ```
//! Shutdown order (the caller's): stop the sources; the sealer drains its
//! channel, cuts every open batch and seals it; then the drainer and the
//! publisher make a last attempt. Whatever the store did not take stays in
//! the outbox for next time.

pub mod broker;
pub mod drainer;
pub mod frames;
pub mod handover;
pub mod lcd;
pub mod retention;
pub mod sealer;
pub mod sharing;
pub mod sources;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeseal_core::{DeviceId, StreamName};
use edgeseal_store::Store;
use edgeseal_store::local::LocalState;
use tracing::{info, warn};

use crate::live::Live;
use crate::service::StoreCell;

/// How long the last attempt to store (or publish) may take at shutdown.
pub const FINAL_DRAIN: Duration = Duration::from_secs(10);

/// What the components count and share while the agent runs.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    /// Readings refused before they were accepted (they could never be sealed).
    pub refused: AtomicU64,
    pub read_errors: AtomicU64,
    pub sealed: AtomicU64,
    /// Attempts to seal a stream's batch that failed (the readings stay journaled and are tried again).
    pub seal_failures: AtomicU64,
    pub stored: AtomicU64,
    /// The store is failing (shown on the LCD).
    pub store_down: AtomicBool,
    /// The broker is configured but unreachable (shown on the LCD).
    pub broker_down: AtomicBool,
    /// Connections to the broker made again after it was lost.
    pub reconnects: AtomicU64,
    pub published: AtomicU64,
    /// Batches too large for an MQTT packet: stored, never published.
    pub unpublishable: AtomicU64,
    /// Live frames sent, and journal commits that went without one (the sender was behind or the broker down).
    pub frames_sent: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub received: AtomicU64,
    /// Messages on peers' topics the inbox refused (forged, replayed, out of order, over the tentative bound).
    pub refused_received: AtomicU64,
    /// Readings refused, by reason: what the sealer refused (`refused`) and lines of input that were no reading.
    pub refusals: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Bytes of peers' unsigned batches held until a signed batch vouches for them.
    pub tentative_bytes: AtomicU64,
    /// The newest value of each scalar stream (shown on the LCD).
    pub latest: Mutex<HashMap<StreamName, (f64, String)>>,
    /// Readings as they are accepted and received, for the HTTP server.
    pub live: Arc<Live>,
}

impl Stats {
    /// Counts `n` readings refused for `reason` (a label: `time_out_of_range`, `not_a_reading`, …).
    pub fn refuse(&self, reason: &'static str, n: u64) {
        *self.refusals.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += n;
    }
}

/// The storage path `up` runs, built once for `up` and for `bench agent`: the
/// sealer fed by `readings`, and the drainer it wakes. The caller spawns and
/// stops them (sealer first, so it seals what is open before the drainer's
/// last attempt), and attaches `commands` to the service.
#[derive(Debug)]
pub struct Pipeline {
    pub sealer: sealer::Sealer,
    pub drainer: drainer::Drainer,
    pub wake: sealer::Wakers,
    pub commands: tokio::sync::mpsc::Sender<crate::service::SealerCommand>,
    /// What the sealer accepts, for live frames: give it to `sharing::connect`, or drop it.
    pub frames: frames::FrameFeed,
}

impl Pipeline {
    pub fn new(
        service: &crate::service::Service,
        local: &LocalState,
        policy: edgeseal_sensors::batcher::Policy,
        stats: &Arc<Stats>,
        readings: tokio::sync::mpsc::Receiver<edgeseal_core::Reading>,
    ) -> crate::Result<Pipeline> {
        use tokio::sync::Notify;
        let cfg = service.config();
        let identity = service.identity()?.clone();
        let wake = sealer::Wakers { drainer: Arc::new(Notify::new()), publisher: Arc::new(Notify::new()) };
        let (commands, commands_rx) = tokio::sync::mpsc::channel(16);
        let (tap, frames) = frames::channel();
        let sealer = sealer::Sealer::new(
            local.clone(),
            identity.clone(),
            policy,
            cfg.per_stream.clone(),
            wake.clone(),
            stats.clone(),
            readings,
            commands_rx,
            tap,
        )
        .sharing_blobs_up_to(cfg.has_broker().then_some(edgeseal_mqtt::link::MAX_SHARED_BLOB));
        let drainer = drainer::Drainer {
            local: local.clone(),
            store: service.store_cell().clone(),
            identity,
            retry_max: cfg.retry_max,
            checkpoint_every: cfg.checkpoint_every,
            notify: wake.drainer.clone(),
            stats: stats.clone(),
        };
        Ok(Pipeline { sealer, drainer, wake, commands, frames })
    }
}

/// A checkpoint of `stream`'s `head`, as of now, signed by this agent (the drainer writes it to
/// the store; the handover publishes it for ingest).
fn signed_checkpoint(
    identity: &edgeseal_core::keys::Identity,
    stream: &StreamName,
    head: &edgeseal_core::chain::Head,
) -> Result<Vec<u8>, edgeseal_core::Error> {
    let device = identity.device_id();
    edgeseal_core::checkpoint::Checkpoint {
        device,
        stream: stream.clone(),
        seq: head.seq,
        head: head.hash,
        ts: crate::now_ms(),
    }
    .sign(identity)
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Streams the store holds for this device but state.db does not know (it was
/// lost or the data directory restored without it) continue after the store's
/// newest authentic batch, instead of starting again at 0 and colliding with
/// what is stored. Best effort: an unreachable store is reported, not fatal.
pub async fn resume_from_store(store: &StoreCell, local: &LocalState, device: DeviceId, timeout: Duration) {
    let known: Vec<StreamName> = match local.stream_states().await {
        Ok(s) => s.into_iter().map(|(name, _)| name).collect(),
        Err(e) => return warn!("cannot read the local stream state: {e}"),
    };
    let work = async {
        let store = store.get().await?;
        let mut resumed = Vec::new();
        for s in store.streams().await?.into_iter().filter(|s| s.device == device) {
            let Ok(stream) = StreamName::new(s.stream.clone()) else { continue };
            if known.contains(&stream) {
                continue;
            }
            let range = edgeseal_store::TimeRange { from: Some(s.last_ts), to: None };
            let rows = store.batches(device, &stream, range).await?;
            // The same per-row check a reader applies: authentic, signed, and where it claims to be.
            let head = edgeseal_store::reader::inspect_all(device, &stream, &rows)
                .into_iter()
                .filter_map(|i| i.verdict.ok())
                .find(|g| g.signed && g.header.seq == s.head_seq);
            if let Some(g) = head
                && local.seed_stream(&stream, g.header.seq.saturating_add(1), g.hash, g.header.epoch).await?
            {
                resumed.push((stream.clone(), g.header.seq));
            }
        }
        Ok::<_, edgeseal_store::Error>(resumed)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(resumed)) => {
            for (stream, seq) in resumed {
                info!("{stream}: state.db had no record of it; continuing after batch {seq} found in the store");
            }
        }
        Ok(Err(e)) => warn!(
            "cannot check the store for streams sealed before ({e}); if state.db was lost, new batches may collide"
        ),
        Err(_) => warn!(
            "the store did not answer in time to check streams sealed before; if state.db was lost, new batches may collide"
        ),
    }
}
