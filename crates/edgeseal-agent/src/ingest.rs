//! `edgeseal ingest`: a stateless process that takes the sealed batches
//! devices publish off the broker, through a shared subscription (any number
//! of ingest processes share the load), checks each one's structure and
//! signature (the signing key travels in the batch, and the device id is its
//! hash: no secret and no pairing needed) and writes them to the store,
//! idempotently, many rows per statement. It sees only ciphertext, so it is
//! untrusted like the broker and the store: readers verify what it wrote.
//!
//! This is the first step of the fleet design (`docs/design.md`): devices
//! still keep their own store; acknowledgements back to devices that hold no
//! database credentials are still to come.
//!
//! A message is acknowledged to the broker only after its row is written.
//! A named process (`--name`) keeps its session across restarts, so after
//! `kill -9` its restart is sent what it had taken and not stored; a batch
//! written twice is "already there".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgeseal_core::envelope::{self, Authorship};
use edgeseal_mqtt::link::Message;
use edgeseal_store::{AnyStore, BatchRow, ConnectOptions, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::share::{Topic, Topics};
use crate::{Error, Result};

/// Rows written in one statement at most, and how long a partial group waits for more.
const GROUP: usize = 512;
const GROUP_WAIT: Duration = Duration::from_millis(20);
/// After a stop: how long to wait for the last messages on their way, and for a store that is down.
const DRAIN: Duration = Duration::from_millis(500);
const GIVE_UP: Duration = Duration::from_secs(10);

/// What an ingest process has done, for its status line.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub received: AtomicU64,
    /// Rows the store did not hold before.
    pub stored: AtomicU64,
    /// Rows the store already held, byte for byte (a redelivery, or a device that stores too).
    pub already_present: AtomicU64,
    /// Rows whose number the store holds with other bytes: kept out (a reader names the conflict).
    pub conflicts: AtomicU64,
    /// Messages that are no batch of the device their topic names, or badly signed.
    pub refused: AtomicU64,
}

/// The MQTT shared subscription every ingest process of `group` makes.
pub fn filter(prefix: &str, group: &str) -> String {
    format!("$share/{group}/{prefix}/+/+/batch")
}

/// A batch message (its topic and payload) as a row to store, or why it is refused.
pub fn row_of(topics: &Topics, topic: &str, payload: Vec<u8>) -> std::result::Result<BatchRow, String> {
    let Some(Topic::Batch { device, stream }) = topics.parse(topic) else {
        return Err(format!("{topic} is not a batch topic"));
    };
    let parsed = envelope::parse(&payload).map_err(|e| format!("not a sealed batch: {e}"))?;
    if parsed.header.device != device || parsed.header.stream != stream {
        return Err(format!(
            "a batch of {}/{} on the topic of {device}/{stream}",
            parsed.header.device, parsed.header.stream
        ));
    }
    let hash = parsed.hash();
    // Unsigned batches are vouched for by the signed batch after them; a reader checks that.
    match parsed.authorship(&hash) {
        Authorship::Device | Authorship::Unsigned => {}
        other => return Err(format!("batch {} of {device}/{stream}: {other:?}", parsed.header.seq)),
    }
    let header = parsed.header.clone();
    Ok(BatchRow::new(header, hash, payload))
}

/// Runs until `stop`: subscribes as one of `group`, stores what arrives and
/// only then acknowledges it, so the broker sends again what a process took
/// and did not store. At the stop it leaves the group and stores what it had
/// already received before it returns.
pub async fn run(
    cfg: &Config,
    group: &str,
    name: Option<&str>,
    stats: Arc<IngestStats>,
    stop: CancellationToken,
) -> Result<()> {
    let store = AnyStore::connect(&cfg.store_url, ConnectOptions { lazy: false, timeout: cfg.store_timeout })
        .await
        .map_err(Error::store)?;
    store.migrate().await.map_err(Error::store)?;
    // Acknowledged only once stored. With a name the session outlives the process, so
    // its restart gets what it had taken and not stored (even after `kill -9`).
    let client_id = name.map_or_else(|| crate::pairing::client_id("ingest"), |n| format!("edgeseal-ingest-{n}"));
    let mut opts = cfg.link_options(&client_id)?;
    opts.persistent_session = name.is_some();
    opts.manual_acks = true;
    // The link outlives the stop by the drain, so what is on its way still arrives.
    let link_stop = CancellationToken::new();
    let _link_stop = link_stop.clone().drop_guard();
    let (link, mut rx) = crate::pairing::connected(opts, &link_stop).await?;
    let topics = Topics::new(&cfg.mqtt.prefix);
    // A store that stays down after the stop is given up on after a while; until then rows wait.
    let give_up = CancellationToken::new();
    let _give_up = {
        let (stop, give_up) = (stop.clone(), give_up.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            tokio::time::sleep(GIVE_UP).await;
            give_up.cancel();
        })
    };
    link.subscribe(&filter(&cfg.mqtt.prefix, group)).await?;
    info!(
        "ingesting {} into {} as one of {group:?}",
        filter(&cfg.mqtt.prefix, group),
        edgeseal_store::redact_url(&cfg.store_url)
    );
    let mut group_rows: Vec<BatchRow> = Vec::with_capacity(GROUP);
    // Stopping: leave the group first, then store what was already received (the broker sends no more).
    let leaving = CancellationToken::new();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled(), if !leaving.is_cancelled() => {
                let _ = link.unsubscribe(&filter(&cfg.mqtt.prefix, group)).await;
                leaving.cancel();
                continue;
            }
            m = rx.recv() => m,
            _ = tokio::time::sleep(DRAIN), if leaving.is_cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut messages = vec![first];
        // Group what arrives meanwhile: one statement for many rows.
        let deadline = tokio::time::Instant::now() + GROUP_WAIT;
        while messages.len() < GROUP {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => messages.push(m),
                _ => break,
            }
        }
        collect(&topics, &mut messages, &mut group_rows, &stats);
        if store_group(&store, &mut group_rows, &stats, &give_up).await {
            for m in &messages {
                if let Err(e) = link.ack(m).await {
                    warn!("{e}: the broker sends it again");
                }
            }
        }
    }
    store.close().await;
    Ok(())
}

/// Parses `messages` into rows (their payloads move into them; what is left is
/// for acknowledging), counting and logging the refused ones.
fn collect(topics: &Topics, messages: &mut [Message], rows: &mut Vec<BatchRow>, stats: &IngestStats) {
    stats.received.fetch_add(messages.len() as u64, Ordering::Relaxed);
    for m in messages {
        match row_of(topics, &m.topic, std::mem::take(&mut m.payload)) {
            Ok(r) => rows.push(r),
            Err(why) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                crate::quiet::once_a_minute("ingest refused", |more| {
                    warn!("refused a message on {}: {why}{more}", m.topic)
                });
            }
        }
    }
}

/// Writes the rows, trying again while the store is down (until `stop`); whether they were written.
async fn store_group(
    store: &AnyStore,
    rows: &mut Vec<BatchRow>,
    stats: &IngestStats,
    stop: &CancellationToken,
) -> bool {
    let mut wait = Duration::from_millis(100);
    while !rows.is_empty() {
        match store.put_batches(rows).await {
            Ok(report) => {
                stats.stored.fetch_add(report.inserted as u64, Ordering::Relaxed);
                stats.already_present.fetch_add(report.already_present as u64, Ordering::Relaxed);
                stats.conflicts.fetch_add(report.conflicts.len() as u64, Ordering::Relaxed);
                rows.clear();
            }
            Err(e) => {
                crate::quiet::once_a_minute("ingest store", |more| {
                    warn!("cannot write to the store: {e}; trying again{more}")
                });
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    true
}

/// What the process did, for its last line.
pub fn summary(stats: &IngestStats) -> String {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "{} batches received, {} stored, {} already there, {} conflicting, {} refused",
        n(&stats.received),
        n(&stats.stored),
        n(&stats.already_present),
        n(&stats.conflicts),
        n(&stats.refused)
    )
}
