//! Retention: each of this agent's streams keeps its batches in the store
//! for `keep` (`retention.keep`, `[streams.NAME] keep`), then they go under
//! a signed record (`edgeseal_core::retention`) that tells readers where the
//! stream now starts, so a deliberate cut is not taken for an attack, while
//! a batch deleted without one is still a gap.
//!
//! Every `every`, for each stream with a `keep`, the newest stored batch is
//! noted with the time (a mark in `state.db`); a mark older than `keep` is a
//! cut: every batch up to it was stored longer ago than that. The record
//! names the first batch kept and its predecessor's hash, and the stream's
//! newest batch is always kept. The store removes what the record names
//! ([`edgeseal_store::Store::retain`]); a device that keeps no store
//! (`store = "broker"`) hands the record to ingest instead (the handover
//! publishes it until an ingest says it applied it).

use std::sync::Arc;
use std::time::Duration;

use edgeseal_core::StreamName;
use edgeseal_core::keys::Identity;
use edgeseal_core::retention::Retention as Record;
use edgeseal_store::Store;
use edgeseal_store::local::LocalState;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Keep;
use crate::service::StoreCell;

#[derive(Debug)]
pub struct Retention {
    pub local: LocalState,
    pub identity: Arc<Identity>,
    pub keep: Keep,
    pub every: Duration,
    /// The store to apply records to; `None` when ingest applies them (`store = "broker"`).
    pub store: Option<Arc<StoreCell>>,
}

impl Retention {
    /// Looks at once, then every `every`, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.pass(crate::now_ms()).await,
            }
        }
    }

    /// Notes where each stream stands, cuts what is older than it keeps, and applies the records.
    pub async fn pass(&self, now: i64) {
        let me = self.identity.device_id();
        let streams = match self.local.remembered_streams(me).await {
            Ok(s) => s,
            Err(e) => return warn!("retention: cannot read the local state: {e}"),
        };
        for stream in streams {
            let Some(keep) = self.keep.of(&stream) else { continue };
            if let Err(e) = self.cut(&stream, keep, now).await {
                warn!("retention of {stream}: {e}");
            }
        }
        let Some(cell) = &self.store else { return };
        let pending = match self.local.retention_pending().await {
            Ok(p) => p,
            Err(e) => return warn!("retention: cannot read the local state: {e}"),
        };
        for (stream, from, record) in pending {
            let applied = async { cell.get().await?.retain(me, &stream, from, &record).await };
            match applied.await {
                Ok(removed) => {
                    if removed > 0 {
                        info!(
                            "{stream}: removed {removed} batches the retention period let go; the stream now starts at batch {from}"
                        );
                    }
                    if let Err(e) = self.local.retention_applied(&stream, from).await {
                        warn!("retention of {stream}: {e}");
                    }
                }
                Err(e) => crate::quiet::once_a_minute("retention store", |more| {
                    warn!("retention of {stream}: the store did not take it ({e}); trying again later{more}")
                }),
            }
        }
    }

    /// Marks where `stream` stands now and, when a mark is older than `keep`, signs the cut there.
    async fn cut(&self, stream: &StreamName, keep: Duration, now: i64) -> edgeseal_store::Result<()> {
        let me = self.identity.device_id();
        let Some(head) = self.local.remembered(me, stream).await? else { return Ok(()) };
        self.local.retention_mark(stream, head.seq, head.hash, now).await?;
        let before = now.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        // The newest batch stays, so a reader always finds where the stream stands.
        let Some((seq, hash)) = self.local.retention_mark_before(stream, before).await?.filter(|(s, _)| *s < head.seq)
        else {
            return Ok(());
        };
        let from = seq + 1;
        if self.local.retention_from(stream).await?.is_some_and(|f| f >= from) {
            return Ok(());
        }
        let record = Record { device: me, stream: stream.clone(), from, head: hash, before, ts: now }
            .sign(&self.identity)
            .map_err(|_| edgeseal_store::Error::BadRow("retention record signing failed"))?;
        self.local.set_retention(stream, from, &record).await
    }
}
