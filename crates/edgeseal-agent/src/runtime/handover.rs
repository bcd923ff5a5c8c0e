//! The handover of a device that keeps no store (`store = "broker"`): the
//! publisher sends each sealed batch to the broker, where `edgeseal ingest`
//! stores it and says so on `PREFIX/<device>/stored`. The handover then
//! removes those batches from the outbox (remembering each stream's head),
//! signs and publishes checkpoints of the heads until an ingest says it stored
//! them, publishes the stream's retention record (`super::retention`) until an
//! ingest says it applied it, and publishes again what was sent
//! [`Handover::resend_after`] ago and is still unacknowledged (the broker or
//! an ingest lost it).
//!
//! What an ingest says is untrusted like the broker and the store: one that
//! lies costs the device the batches it lied about, and the store then lacks
//! them, which a reader's `verify` names (the next batch names the missing
//! one's hash; a signed checkpoint names a missing tail).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeseal_core::StreamName;
use edgeseal_core::keys::Identity;
use edgeseal_mqtt::link::Link;
use edgeseal_store::local::LocalState;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{FINAL_DRAIN, Stats};
use crate::ingest::Stored;
use crate::share::Topics;

/// Batches published again at most per look.
const RESEND_CHUNK: u32 = 256;
/// At shutdown, how long to wait for an acknowledgement once nothing more is on its way.
const QUIET: Duration = Duration::from_secs(2);

pub struct Handover {
    pub local: LocalState,
    pub identity: Arc<Identity>,
    pub link: Link,
    pub topics: Topics,
    pub stats: Arc<Stats>,
    /// Payloads received on this device's `stored` topic.
    pub acks: mpsc::Receiver<Vec<u8>>,
    pub checkpoint_every: Duration,
    /// How long a published batch waits for an acknowledgement before it is published again.
    pub resend_after: Duration,
    /// Woken when batches are queued for publishing again.
    pub publisher: Arc<Notify>,
    /// Keeps the link up until the handover's last attempt is over.
    pub _link_stop: Arc<tokio_util::sync::DropGuard>,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover").field("link", &self.link).finish_non_exhaustive()
    }
}

impl Handover {
    /// Runs until `shutdown`, then waits (up to [`FINAL_DRAIN`]) for what is on
    /// its way to be acknowledged, with a last checkpoint of each stream.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // Streams whose head no stored checkpoint covers yet.
        let mut dirty: BTreeSet<StreamName> = match self.local.remembered_streams(self.identity.device_id()).await {
            Ok(s) => s.into_iter().collect(),
            Err(_) => BTreeSet::new(),
        };
        let mut last_checkpoint = Instant::now();
        let resend_every = (self.resend_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut last_resend = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let connected = self.link.connected();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                a = self.acks.recv() => match a {
                    Some(payload) => self.apply(&payload, &mut dirty).await,
                    None => return,
                },
                _ = tick.tick() => {
                    if !*connected.borrow() {
                        continue;
                    }
                    if last_checkpoint.elapsed() >= self.checkpoint_every {
                        if !dirty.is_empty() {
                            self.checkpoints(&dirty).await;
                        }
                        self.retention().await;
                        last_checkpoint = Instant::now();
                    }
                    if last_resend.elapsed() >= resend_every {
                        self.resend().await;
                        last_resend = Instant::now();
                    }
                }
            }
        }
        // The publisher makes its last attempt meanwhile; what it sends is acknowledged, then
        // the heads are checkpointed. Whatever is not acknowledged stays in the outbox.
        let deadline = Instant::now() + FINAL_DRAIN;
        let mut checkpointed = false;
        loop {
            let waiting = self.local.own_outbox_len().await.unwrap_or(0);
            let queued = self.local.publish_queue(1).await.map(|q| !q.is_empty()).unwrap_or(false);
            if waiting == 0 && !checkpointed && !dirty.is_empty() {
                self.checkpoints(&dirty).await;
                checkpointed = true;
            }
            if waiting == 0 && dirty.is_empty() {
                return;
            }
            let patience = if queued { Duration::from_millis(200) } else { QUIET };
            let until = (Instant::now() + patience).min(deadline);
            match tokio::time::timeout_at(until, self.acks.recv()).await {
                Ok(Some(payload)) => self.apply(&payload, &mut dirty).await,
                Ok(None) => return,
                Err(_) if queued && Instant::now() < deadline => {}
                Err(_) => {
                    if waiting > 0 {
                        info!(
                            "{waiting} batches wait in the outbox for an ingest to acknowledge them; they are published again on the next start"
                        );
                    }
                    return;
                }
            }
        }
    }

    /// Applies what an ingest says it stored: removes those batches from the
    /// outbox and notes the checkpoints. Anything else is refused, counted and logged.
    async fn apply(&self, payload: &[u8], dirty: &mut BTreeSet<StreamName>) {
        let me = self.identity.device_id();
        let stored: Stored = match serde_json::from_slice(payload) {
            Ok(s) => s,
            Err(e) => {
                self.stats.refused_received.fetch_add(1, Ordering::Relaxed);
                return crate::quiet::once_a_minute("handover refused", |more| {
                    warn!("refused a message on {}: not what an ingest stored ({e}){more}", self.topics.stored(me))
                });
            }
        };
        for run in &stored.batches {
            let Ok(stream) = StreamName::new(run.stream.clone()) else { continue };
            if run.from > run.to {
                continue;
            }
            match self.local.outbox_acked(me, &stream, run.from, run.to).await {
                Ok(0) => {}
                Ok(n) => {
                    self.stats.stored.fetch_add(n, Ordering::Relaxed);
                    dirty.insert(stream);
                    debug!("an ingest stored batches {}..={} of {}", run.from, run.to, run.stream);
                }
                Err(e) => warn!("cannot take acknowledged batches of {} out of the outbox: {e}", run.stream),
            }
        }
        for cut in &stored.retention {
            let Ok(stream) = StreamName::new(cut.stream.clone()) else { continue };
            if let Err(e) = self.local.retention_applied(&stream, cut.seq).await {
                warn!("cannot note the applied retention record of {stream}: {e}");
            }
        }
        for cp in &stored.checkpoints {
            let Ok(stream) = StreamName::new(cp.stream.clone()) else { continue };
            let head = self.local.remembered(me, &stream).await.ok().flatten();
            if head.is_some_and(|h| h.seq <= cp.seq) {
                dirty.remove(&stream);
            }
            if let Err(e) = self.local.saw_checkpoint(me, &stream, cp.seq).await {
                warn!("cannot note the stored checkpoint of {stream}: {e}");
            }
        }
    }

    /// Signs and publishes a checkpoint of each of `streams`' heads (QoS 1).
    async fn checkpoints(&self, streams: &BTreeSet<StreamName>) {
        let me = self.identity.device_id();
        for stream in streams {
            let Ok(Some(head)) = self.local.remembered(me, stream).await else { continue };
            let Ok(signed) = super::signed_checkpoint(&self.identity, stream, &head) else { continue };
            match self.link.send(&self.topics.checkpoint(me, stream), signed, false).await {
                Ok(_) => debug!("checkpoint {} of {stream} published", head.seq),
                Err(e) => debug!("checkpoint of {stream} waits: {e}"),
            }
        }
    }

    /// Publishes the retention records no ingest has applied yet (QoS 1).
    async fn retention(&self) {
        let me = self.identity.device_id();
        for (stream, from, record) in self.local.retention_pending().await.unwrap_or_default() {
            match self.link.send(&self.topics.retention(me, &stream), record, false).await {
                Ok(_) => debug!("retention record of {stream} from batch {from} published"),
                Err(e) => debug!("retention record of {stream} waits: {e}"),
            }
        }
    }

    /// Queues again what was published too long ago and never acknowledged.
    async fn resend(&self) {
        let before = crate::now_ms().saturating_sub(i64::try_from(self.resend_after.as_millis()).unwrap_or(i64::MAX));
        match self.local.requeue_unacknowledged(before, RESEND_CHUNK).await {
            Ok(0) => {}
            Ok(n) => {
                crate::quiet::once_a_minute("handover resend", |more| {
                    info!(
                        "publishing again {n} batches no ingest acknowledged within {}{more}",
                        humantime::format_duration(self.resend_after)
                    )
                });
                self.publisher.notify_one();
            }
            Err(e) => warn!("cannot queue unacknowledged batches again: {e}"),
        }
    }
}
