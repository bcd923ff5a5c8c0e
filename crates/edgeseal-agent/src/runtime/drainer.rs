//! The drainer: moves sealed batches from the outbox to the store (in
//! transactions of [`DRAIN_CHUNK`] batches or [`DRAIN_BYTES`]), remembers this agent's heads, signs
//! checkpoints, and writes the grants this agent gives to the store too (a
//! peer that reads the store finds its grant there). While the store is down it backs off and keeps everything in
//! the outbox; at shutdown it makes one last attempt.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeseal_core::chain::Head;
use edgeseal_core::keys::Identity;
use edgeseal_core::{DeviceId, StreamName};
use edgeseal_store::local::LocalState;
use edgeseal_store::{BatchRow, Store};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{FINAL_DRAIN, Stats};
use crate::service::StoreCell;

/// Batches per store transaction.
pub const DRAIN_CHUNK: u32 = 1024;
/// A store transaction takes no more batches once they reach this many bytes.
pub const DRAIN_BYTES: u64 = 8 << 20;

#[derive(Debug)]
pub struct Drainer {
    pub local: LocalState,
    pub store: Arc<StoreCell>,
    pub identity: Arc<Identity>,
    /// The longest wait between attempts while the store is down.
    pub retry_max: Duration,
    pub checkpoint_every: Duration,
    /// Woken by the sealer and the receiver for each batch queued.
    pub notify: Arc<Notify>,
    pub stats: Arc<Stats>,
}

impl Drainer {
    /// Drains until `shutdown`, then makes a last attempt (up to [`FINAL_DRAIN`]).
    pub async fn run(self, shutdown: CancellationToken) {
        let device = self.identity.device_id();
        let mut backoff = Duration::from_millis(250);
        let mut down_since: Option<Instant> = None;
        let mut dirty: BTreeSet<StreamName> = BTreeSet::new();
        let mut last_checkpoint = Instant::now();
        let mut final_deadline: Option<Instant> = None;
        loop {
            let stopping = shutdown.is_cancelled();
            if stopping && final_deadline.is_none() {
                final_deadline = Some(Instant::now() + FINAL_DRAIN);
            }
            let mut result = self.pass(device, &mut dirty).await;
            // Grants and checkpoints go to the store when a checkpoint is due (and at the stop),
            // not at every pass: passes follow every sealed batch.
            let due = stopping || last_checkpoint.elapsed() >= self.checkpoint_every;
            if result.is_ok() && due {
                result = self.grants(device).await;
            }
            if result.is_ok() && !dirty.is_empty() && due {
                result = self.checkpoint(device, &mut dirty).await;
                last_checkpoint = Instant::now();
            }
            match result {
                Ok(()) => {
                    self.stats.store_down.store(false, Ordering::Relaxed);
                    if let Some(since) = down_since.take() {
                        info!(
                            "the store is reachable again after {}; the outbox is drained",
                            humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
                        );
                    }
                    backoff = Duration::from_millis(250);
                    if stopping {
                        return;
                    }
                }
                Err(e) => {
                    self.stats.store_down.store(true, Ordering::Relaxed);
                    if down_since.is_none() {
                        warn!("cannot store batches: {e}. Keeping them in the local outbox and retrying");
                        down_since = Some(Instant::now());
                    } else {
                        debug!("store still unreachable: {e}");
                    }
                    if final_deadline.is_some_and(|d| Instant::now() + backoff > d) {
                        warn!("stopping while the store is unreachable; the outbox is sent on the next start");
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled(), if !stopping => {}
                    }
                    backoff = (backoff * 2).min(self.retry_max);
                    continue;
                }
            }
            let until_checkpoint =
                self.checkpoint_every.saturating_sub(last_checkpoint.elapsed()).max(Duration::from_millis(100));
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(until_checkpoint) => {}
            }
        }
    }

    /// Stores everything in the outbox, a chunk per transaction.
    async fn pass(&self, device: DeviceId, dirty: &mut BTreeSet<StreamName>) -> edgeseal_store::Result<()> {
        let store = self.store.get().await?;
        loop {
            let batch = self.local.outbox_upto(device, DRAIN_CHUNK, DRAIN_BYTES).await?;
            if batch.is_empty() {
                return Ok(());
            }
            let (ids, rows): (Vec<i64>, Vec<BatchRow>) = batch.into_iter().unzip();
            let report = store.put_batches(&rows).await?;
            let mut rejected = Vec::new();
            for &i in &report.conflicts {
                error!(
                    "the store already holds a different batch {} of {}; this one is kept in state.db (table rejected)",
                    rows[i].seq, rows[i].stream
                );
                rejected.push((ids[i], format!("the store holds a different batch {}", rows[i].seq)));
            }
            let stored = ids.len() - report.conflicts.len();
            // Heads of this agent's streams (received batches were remembered on arrival).
            let mut heads: HashMap<&StreamName, &BatchRow> = HashMap::new();
            for (i, r) in rows.iter().enumerate() {
                if report.conflicts.contains(&i) || r.device != device {
                    continue;
                }
                if heads.get(&r.stream).is_none_or(|h| r.seq > h.seq) {
                    heads.insert(&r.stream, r);
                }
            }
            let heads: Vec<(DeviceId, &StreamName, Head)> = heads
                .into_iter()
                .map(|(s, r)| {
                    (device, s, Head { seq: r.seq, hash: edgeseal_core::envelope::BatchHash(r.hash), ts: r.last_ts })
                })
                .collect();
            let through = *ids.last().expect("the chunk is not empty");
            self.local.outbox_done(through, &rejected, &heads).await?;
            self.stats.stored.fetch_add(stored as u64, Ordering::Relaxed);
            dirty.extend(heads.iter().map(|(_, s, _)| (*s).clone()));
            debug!("stored {stored} batches");
        }
    }

    /// Writes the grants given since the last pass to the store.
    async fn grants(&self, device: DeviceId) -> edgeseal_store::Result<()> {
        let unstored = self.local.grants_unstored().await?;
        if unstored.is_empty() {
            return Ok(());
        }
        let store = self.store.get().await?;
        for (peer, stream, grant) in unstored {
            // This agent made it; a grant that does not parse is not one to keep anywhere.
            if let Ok(info) = edgeseal_core::grant::peek(&grant) {
                store.put_grant(device, &stream, peer, info.issued_ms, &grant).await?;
            }
            self.local.grant_stored(peer, &stream, &grant).await?;
        }
        Ok(())
    }

    async fn checkpoint(&self, device: DeviceId, dirty: &mut BTreeSet<StreamName>) -> edgeseal_store::Result<()> {
        let store = self.store.get().await?;
        while let Some(stream) = dirty.first().cloned() {
            if let Some(head) = self.local.remembered(device, &stream).await? {
                let bytes = super::signed_checkpoint(&self.identity, &stream, &head)
                    .map_err(|_| edgeseal_store::Error::BadRow("checkpoint signing failed"))?;
                store.put_checkpoint(device, &stream, head.seq, &bytes).await?;
                self.local.saw_checkpoint(device, &stream, head.seq).await?;
                debug!("checkpoint {} of {stream}", head.seq);
            }
            dirty.remove(&stream);
        }
        Ok(())
    }
}
