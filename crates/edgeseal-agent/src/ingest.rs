//! `edgeseal ingest`: a stateless process that takes the sealed batches
//! devices publish off the broker, through a shared subscription (any number
//! of ingest processes share the load), checks each one's structure and
//! signature (the signing key travels in the batch, and the device id is its
//! hash: no secret and no pairing needed) and writes them to the store,
//! idempotently, many rows per statement. It sees only ciphertext, so it is
//! untrusted like the broker and the store: readers verify what it wrote.
//!
//! It stores the devices' signed checkpoints and grants too, applies their signed
//! retention records (removing the batches each names, which readers then do
//! not count as missing), and tells each device what it stored (JSON on `PREFIX/<device>/stored`, [`Stored`]): a device with
//! `store = "broker"`, which holds no database credentials, keeps each batch
//! until told. That word is untrusted like everything else here: an ingest
//! that lies costs the device those batches, and `verify` names the gap.
//!
//! A message is acknowledged to the broker only after its row is written.
//! A named process (`--name`) keeps its session across restarts, so after
//! `kill -9` its restart is sent what it had taken and not stored; a batch
//! written twice is "already there".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgeseal_core::checkpoint::Checkpoint;
use edgeseal_core::envelope::{self, Authorship, BatchHash};
use edgeseal_core::grant;
use edgeseal_core::retention::Retention;
use edgeseal_core::{DeviceId, StreamName};
use edgeseal_mqtt::link::{Link, Message};
use edgeseal_store::{AnyStore, BatchRow, ConnectOptions, Store};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::share::{Topic, Topics};
use crate::{Error, Result};

/// Rows written in one statement at most, and how long a partial group waits for more.
const GROUP: usize = 512;
const GROUP_WAIT: Duration = Duration::from_millis(20);
/// How often each device is told what was stored of it: what several writes stored goes in one
/// message (a device sending ten batches a second hears once for them all, not ten times).
const TELL_EVERY: Duration = Duration::from_millis(250);
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
    /// Signed checkpoints stored (or already there).
    pub checkpoints: AtomicU64,
    /// Signed grants stored (or already there, or older than the one there).
    pub grants: AtomicU64,
    /// Signed retention records applied, and the batches they removed.
    pub retentions: AtomicU64,
    pub removed: AtomicU64,
    /// Messages that are no batch or checkpoint of the device their topic names, or badly signed.
    pub refused: AtomicU64,
}

/// The MQTT shared subscriptions every ingest process of `group` makes: batches,
/// checkpoints, retention records and grants. No group (`""`): plain
/// subscriptions, for brokers that share none.
pub fn filters(prefix: &str, group: &str) -> [String; 4] {
    let share = if group.is_empty() { String::new() } else { format!("$share/{group}/") };
    ["batch", "checkpoint", "retention", "grant/+"].map(|kind| format!("{share}{prefix}/+/+/{kind}"))
}

/// What an ingest process tells a device it stored: runs of batch numbers per
/// stream, and the checkpoints. JSON on `PREFIX/<device>/stored`, QoS 1;
/// fields a device does not know are ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<Run>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<StoredCheckpoint>,
    /// Retention records applied: the streams now start at `seq`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retention: Vec<StoredCheckpoint>,
}

impl Stored {
    /// Adds what a later write stored: runs that touch or overlap become one;
    /// of checkpoints and retention records, the newest of each stream.
    pub fn merge(&mut self, later: Stored) {
        self.batches.extend(later.batches);
        self.batches.sort_by(|a, b| (&a.stream, a.from).cmp(&(&b.stream, b.from)));
        let mut runs: Vec<Run> = Vec::with_capacity(self.batches.len());
        for r in self.batches.drain(..) {
            match runs.last_mut() {
                Some(last) if last.stream == r.stream && r.from <= last.to.saturating_add(1) => {
                    last.to = last.to.max(r.to)
                }
                _ => runs.push(r),
            }
        }
        self.batches = runs;
        for (mine, theirs) in [(&mut self.checkpoints, later.checkpoints), (&mut self.retention, later.retention)] {
            for c in theirs {
                match mine.iter_mut().find(|m| m.stream == c.stream) {
                    Some(m) => m.seq = m.seq.max(c.seq),
                    None => mine.push(c),
                }
            }
        }
    }
}

/// Batches `from..=to` of `stream`, stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub stream: String,
    pub from: u64,
    pub to: u64,
}

/// The checkpoint of `stream` at batch `seq`, stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    pub stream: String,
    pub seq: u64,
}

/// What a message off the broker is, to store.
#[derive(Debug)]
pub enum Item {
    Batch(BatchRow),
    Checkpoint {
        device: DeviceId,
        stream: StreamName,
        seq: u64,
        signed: Vec<u8>,
    },
    /// A signed retention record: the stream starts at `from`.
    Retention {
        device: DeviceId,
        stream: StreamName,
        from: u64,
        signed: Vec<u8>,
    },
    /// A grant `owner` signed for `peer`.
    Grant {
        owner: DeviceId,
        stream: StreamName,
        peer: DeviceId,
        issued_ms: i64,
        signed: Vec<u8>,
    },
}

/// A message (its topic and payload) as an item to store, or why it is refused.
pub fn item_of(topics: &Topics, topic: &str, payload: Vec<u8>) -> std::result::Result<Item, String> {
    items_of(topics, vec![(topic, payload)]).pop().expect("one answer for one message")
}

/// Messages (topic, payload) as items to store, or why each is refused, in
/// order; the signatures of the batches among them are checked together.
pub fn items_of(topics: &Topics, messages: Vec<(&str, Vec<u8>)>) -> Vec<std::result::Result<Item, String>> {
    let mut out: Vec<Option<std::result::Result<Item, String>>> = Vec::with_capacity(messages.len());
    let mut batches = Vec::new();
    for (i, (topic, payload)) in messages.into_iter().enumerate() {
        match topics.parse(topic) {
            Some(Topic::Batch { device, stream }) => {
                out.push(None);
                batches.push((i, device, stream, payload));
            }
            other => out.push(Some(other_item(other, topic, payload))),
        }
    }
    let checked = {
        let parsed: Vec<std::result::Result<envelope::Parsed<'_>, String>> =
            batches.iter().map(|(_, device, stream, payload)| parsed_of(*device, stream, payload)).collect();
        let hashes: Vec<Option<BatchHash>> = parsed.iter().map(|p| p.as_ref().ok().map(|p| p.hash())).collect();
        let pairs: Vec<(&envelope::Parsed<'_>, &BatchHash)> =
            parsed.iter().zip(&hashes).filter_map(|(p, h)| Some((p.as_ref().ok()?, h.as_ref()?))).collect();
        let mut by = envelope::Parsed::authorships(&pairs).into_iter();
        parsed
            .iter()
            .zip(&hashes)
            .map(|(p, h)| {
                let (p, h) = (p.as_ref().map_err(Clone::clone)?, h.expect("parsed ones have a hash"));
                // Unsigned batches are vouched for by the signed batch after them; a reader checks that.
                match by.next().expect("one authorship per parsed batch") {
                    Authorship::Device | Authorship::Unsigned => Ok((p.header.clone(), h)),
                    other => {
                        Err(format!("batch {} of {}/{}: {other:?}", p.header.seq, p.header.device, p.header.stream))
                    }
                }
            })
            .collect::<Vec<_>>()
    };
    for ((i, _, _, payload), c) in batches.into_iter().zip(checked) {
        out[i] = Some(c.map(|(header, hash)| Item::Batch(BatchRow::new(header, hash, payload))));
    }
    out.into_iter().map(|o| o.expect("every message has its answer")).collect()
}

/// A message that is not a batch as an item to store, or why it is refused.
fn other_item(kind: Option<Topic>, topic: &str, payload: Vec<u8>) -> std::result::Result<Item, String> {
    match kind {
        Some(Topic::Checkpoint { device, stream }) => {
            let (cp, by) = Checkpoint::parse(&payload).map_err(|e| format!("not a signed checkpoint: {e}"))?;
            if cp.device != device || cp.stream != stream {
                return Err(format!("a checkpoint of {}/{} on the topic of {device}/{stream}", cp.device, cp.stream));
            }
            if by != Authorship::Device {
                return Err(format!("checkpoint {} of {device}/{stream}: {by:?}", cp.seq));
            }
            Ok(Item::Checkpoint { device, stream, seq: cp.seq, signed: payload })
        }
        Some(Topic::Retention { device, stream }) => {
            let (r, by) = Retention::parse(&payload).map_err(|e| format!("not a retention record: {e}"))?;
            if r.device != device || r.stream != stream {
                return Err(format!(
                    "a retention record of {}/{} on the topic of {device}/{stream}",
                    r.device, r.stream
                ));
            }
            if by != Authorship::Device {
                return Err(format!("retention record from {} of {device}/{stream}: {by:?}", r.from));
            }
            Ok(Item::Retention { device, stream, from: r.from, signed: payload })
        }
        Some(Topic::Grant { owner, stream, peer }) => {
            let info = grant::authentic(&payload).map_err(|e| format!("not a grant its owner signed: {e}"))?;
            if (info.owner, &info.stream, info.peer) != (owner, &stream, peer) {
                return Err(format!(
                    "a grant of {}/{} to {} on the topic of {owner}/{stream} to {peer}",
                    info.owner, info.stream, info.peer
                ));
            }
            Ok(Item::Grant { owner, stream, peer, issued_ms: info.issued_ms, signed: payload })
        }
        _ => Err(format!("{topic} is not a batch, checkpoint, retention or grant topic")),
    }
}

/// A batch of `device`'s `stream` (as its topic names them), parsed, or why it is refused.
fn parsed_of<'a>(
    device: DeviceId,
    stream: &StreamName,
    payload: &'a [u8],
) -> std::result::Result<envelope::Parsed<'a>, String> {
    let parsed = envelope::parse(payload).map_err(|e| format!("not a sealed batch: {e}"))?;
    if parsed.header.device != device || parsed.header.stream != *stream {
        return Err(format!(
            "a batch of {}/{} on the topic of {device}/{stream}",
            parsed.header.device, parsed.header.stream
        ));
    }
    Ok(parsed)
}

/// Runs until `stop`: subscribes as one of `group`, stores what arrives, tells
/// each device what was stored, and only then acknowledges the messages, so
/// the broker sends again what a process took and did not store. At the stop
/// it leaves the group and stores what it had already received before it returns.
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
    if name.is_none() {
        warn!(
            "without --name this process's broker session ends with it: batches it holds when killed are lost to the store until their devices publish them again (those with store = \"broker\" do, after outbox.resend_after); give each process its own --name, and its restart gets them"
        );
    }
    if group.contains(['/', '+', '#']) {
        return Err(Error::bad(format!("--group {group:?}: a group name cannot hold '/', '+' or '#'")));
    }
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
    let filters = filters(&cfg.mqtt.prefix, group);
    for f in &filters {
        link.subscribe(f).await?;
    }
    let how = if group.is_empty() { "unshared".to_string() } else { format!("as one of {group:?}") };
    info!("ingesting {} into {} {how}", filters.join(" and "), edgeseal_store::redact_url(&cfg.store_url));
    // One task writes while this one takes in and checks the next group: the two overlap.
    let (to_writer, groups) = tokio::sync::mpsc::channel::<(Vec<Item>, Vec<Message>)>(1);
    let writer = tokio::spawn(write_groups(store, link.clone(), topics.clone(), groups, stats.clone(), give_up));
    // Stopping: leave the group first, then store what was already received (the broker sends no more).
    let leaving = CancellationToken::new();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled(), if !leaving.is_cancelled() => {
                for f in &filters {
                    let _ = link.unsubscribe(f).await;
                }
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
        let mut items = Vec::with_capacity(messages.len());
        collect(&topics, &mut messages, &mut items, &stats);
        if to_writer.send((items, messages)).await.is_err() {
            break;
        }
    }
    drop(to_writer);
    let _ = writer.await;
    Ok(())
}

/// Writes each group of items, then acknowledges its messages to the broker
/// (in the order received, as MQTT requires); tells each device what was
/// stored of it every [`TELL_EVERY`], and at the end.
async fn write_groups(
    store: AnyStore,
    link: Link,
    topics: Topics,
    mut groups: tokio::sync::mpsc::Receiver<(Vec<Item>, Vec<Message>)>,
    stats: Arc<IngestStats>,
    give_up: CancellationToken,
) {
    // What was stored and not told yet, by device.
    let mut untold: BTreeMap<DeviceId, Stored> = BTreeMap::new();
    let mut tell = tokio::time::interval(TELL_EVERY);
    tell.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (mut items, messages) = tokio::select! {
            g = groups.recv() => match g { Some(g) => g, None => break },
            _ = tell.tick(), if !untold.is_empty() => {
                tell_devices(&link, &topics, std::mem::take(&mut untold)).await;
                continue;
            }
        };
        if let Some(stored) = store_group(&store, &mut items, &stats, &give_up).await {
            for (device, what) in stored {
                untold.entry(device).or_default().merge(what);
            }
            for m in &messages {
                if let Err(e) = link.ack(m).await {
                    warn!("{e}: the broker sends it again");
                }
            }
        }
    }
    tell_devices(&link, &topics, untold).await;
    store.close().await;
}

/// Parses `messages` into items (their payloads move into them; what is left
/// is for acknowledging), counting and logging the refused ones.
fn collect(topics: &Topics, messages: &mut [Message], items: &mut Vec<Item>, stats: &IngestStats) {
    stats.received.fetch_add(messages.len() as u64, Ordering::Relaxed);
    let taken = messages
        .iter_mut()
        .map(|m| {
            let Message { topic, payload, .. } = m;
            let topic: &String = topic;
            (topic.as_str(), std::mem::take(payload))
        })
        .collect();
    let answers = items_of(topics, taken);
    for (m, answer) in messages.iter().zip(answers) {
        match answer {
            Ok(item) => items.push(item),
            Err(why) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                crate::quiet::once_a_minute("ingest refused", |more| {
                    warn!("refused a message on {}: {why}{more}", m.topic)
                });
            }
        }
    }
}

/// Writes the items, trying again while the store is down (until `stop`);
/// what each device now has in the store, or `None` when they were not written.
async fn store_group(
    store: &AnyStore,
    items: &mut Vec<Item>,
    stats: &IngestStats,
    stop: &CancellationToken,
) -> Option<BTreeMap<DeviceId, Stored>> {
    let mut rows = Vec::with_capacity(items.len());
    let (mut checkpoints, mut retentions, mut grants) = (Vec::new(), Vec::new(), Vec::new());
    for item in items.drain(..) {
        match item {
            Item::Batch(r) => rows.push(r),
            Item::Checkpoint { device, stream, seq, signed } => checkpoints.push((device, stream, seq, signed)),
            Item::Retention { device, stream, from, signed } => retentions.push((device, stream, from, signed)),
            Item::Grant { owner, stream, peer, issued_ms, signed } => {
                grants.push((owner, stream, peer, issued_ms, signed))
            }
        }
    }
    if rows.is_empty() && checkpoints.is_empty() && retentions.is_empty() && grants.is_empty() {
        return Some(BTreeMap::new()); // every message was refused: nothing to write, all to acknowledge
    }
    let mut wait = Duration::from_millis(100);
    loop {
        let written = async {
            let report = store.put_batches(&rows).await?;
            for (device, stream, seq, signed) in &checkpoints {
                store.put_checkpoint(*device, stream, *seq, signed).await?;
            }
            for (owner, stream, peer, issued_ms, signed) in &grants {
                store.put_grant(*owner, stream, *peer, *issued_ms, signed).await?;
            }
            // After the batches: a record removes what it names, whenever that arrived.
            let mut removed = 0;
            for (device, stream, from, signed) in &retentions {
                removed += store.retain(*device, stream, *from, signed).await?;
            }
            Ok::<_, edgeseal_store::Error>((report, removed))
        };
        match written.await {
            Ok((report, removed)) => {
                stats.retentions.fetch_add(retentions.len() as u64, Ordering::Relaxed);
                stats.grants.fetch_add(grants.len() as u64, Ordering::Relaxed);
                stats.removed.fetch_add(removed, Ordering::Relaxed);
                stats.stored.fetch_add(report.inserted as u64, Ordering::Relaxed);
                stats.already_present.fetch_add(report.already_present as u64, Ordering::Relaxed);
                stats.conflicts.fetch_add(report.conflicts.len() as u64, Ordering::Relaxed);
                stats.checkpoints.fetch_add(checkpoints.len() as u64, Ordering::Relaxed);
                let kept = rows.iter().enumerate().filter(|(i, _)| !report.conflicts.contains(i)).map(|(_, r)| r);
                let cps = checkpoints.iter().map(|(d, s, seq, _)| (*d, s, *seq));
                let mut told = stored(kept, cps);
                for (device, stream, from, _) in &retentions {
                    let cut = StoredCheckpoint { stream: stream.to_string(), seq: *from };
                    told.entry(*device).or_default().retention.push(cut);
                }
                return Some(told);
            }
            Err(e) => {
                crate::quiet::once_a_minute("ingest store", |more| {
                    warn!("cannot write to the store: {e}; trying again{more}")
                });
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// What each device has in the store after a group was written: its batches
/// (as runs of consecutive numbers per stream) and its checkpoints.
pub fn stored<'a>(
    rows: impl IntoIterator<Item = &'a BatchRow>,
    checkpoints: impl IntoIterator<Item = (DeviceId, &'a StreamName, u64)>,
) -> BTreeMap<DeviceId, Stored> {
    let mut seqs: BTreeMap<(DeviceId, &str), Vec<u64>> = BTreeMap::new();
    for r in rows {
        seqs.entry((r.device, r.stream.as_str())).or_default().push(r.seq);
    }
    let mut out: BTreeMap<DeviceId, Stored> = BTreeMap::new();
    for ((device, stream), mut seqs) in seqs {
        seqs.sort_unstable();
        seqs.dedup();
        let runs = &mut out.entry(device).or_default().batches;
        for seq in seqs {
            match runs.last_mut() {
                Some(r) if r.stream == stream && r.to.checked_add(1) == Some(seq) => r.to = seq,
                _ => runs.push(Run { stream: stream.to_string(), from: seq, to: seq }),
            }
        }
    }
    for (device, stream, seq) in checkpoints {
        out.entry(device).or_default().checkpoints.push(StoredCheckpoint { stream: stream.to_string(), seq });
    }
    out
}

/// Publishes to each device what it now has in the store (QoS 1, not waited
/// for: a device that is not told publishes the batches again later).
async fn tell_devices(link: &Link, topics: &Topics, stored: BTreeMap<DeviceId, Stored>) {
    for (device, what) in stored {
        let body = serde_json::to_vec(&what).expect("a Stored serialises");
        if let Err(e) = link.send(&topics.stored(device), body, false).await {
            debug!("cannot tell {device} what was stored: {e}; it publishes those batches again later");
        }
    }
}

/// What the process did, for its last line.
pub fn summary(stats: &IngestStats) -> String {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "{} messages received: {} batches stored, {} already there, {} conflicting, {} checkpoints, {} grants, {} retention records ({} batches removed), {} refused",
        n(&stats.received),
        n(&stats.stored),
        n(&stats.already_present),
        n(&stats.conflicts),
        n(&stats.checkpoints),
        n(&stats.grants),
        n(&stats.retentions),
        n(&stats.removed),
        n(&stats.refused)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: u8, stream: &str, seq: u64) -> BatchRow {
        BatchRow {
            device: DeviceId([device; 16]),
            stream: StreamName::new(stream).unwrap(),
            seq,
            first_ts: 0,
            last_ts: 0,
            count: 1,
            epoch: 0,
            hash: [0; 32],
            sealed: Vec::new(),
        }
    }

    #[test]
    fn a_grant_is_taken_when_its_owner_signed_it_for_the_peer_its_topic_names() {
        use edgeseal_core::keys::Identity;
        let (owner, peer) = (Identity::from_secret_bytes(&[1; 96]), Identity::from_secret_bytes(&[2; 96]));
        let s = StreamName::new("room.t").unwrap();
        let terms = grant::Terms { issued_ms: 7, from_ms: 0, to_ms: i64::MAX };
        let keys = [(0, edgeseal_core::keys::TreeNode::root(&owner.epoch_key(&s, 0)))];
        let bytes = grant::issue(&owner, &peer.public(), &s, terms, &keys, &mut crate::share::rng()).unwrap();
        let topics = Topics::new("p");
        let on = |to: &Identity| topics.grant(owner.device_id(), &s, to.device_id());
        match item_of(&topics, &on(&peer), bytes.clone()) {
            Ok(Item::Grant { owner: o, peer: p, issued_ms: 7, .. }) => {
                assert_eq!((o, p), (owner.device_id(), peer.device_id()))
            }
            other => panic!("{other:?}"),
        }
        // On another peer's topic, or altered: refused.
        assert!(item_of(&topics, &on(&owner), bytes.clone()).is_err());
        let mut altered = bytes;
        let n = altered.len();
        altered[n - 70] ^= 1;
        assert!(item_of(&topics, &on(&peer), altered).is_err());
    }

    #[test]
    fn what_several_writes_stored_is_told_at_once() {
        let run = |s: &str, from, to| Run { stream: s.into(), from, to };
        let cp = |s: &str, seq| StoredCheckpoint { stream: s.into(), seq };
        let mut told =
            Stored { batches: vec![run("t", 4, 6), run("u", 0, 0)], checkpoints: vec![cp("t", 3)], retention: vec![] };
        told.merge(Stored {
            batches: vec![run("t", 7, 7), run("t", 0, 2), run("t", 10, 12), run("t", 11, 15)],
            checkpoints: vec![cp("t", 7), cp("u", 0)],
            retention: vec![cp("t", 2)],
        });
        assert_eq!(told.batches, [run("t", 0, 2), run("t", 4, 7), run("t", 10, 15), run("u", 0, 0)]);
        assert_eq!(told.checkpoints, [cp("t", 7), cp("u", 0)]);
        assert_eq!(told.retention, [cp("t", 2)]);
    }

    #[test]
    fn what_was_stored_is_told_as_runs_per_device_and_stream() {
        let rows = [
            row(1, "t", 4),
            row(1, "t", 2),
            row(1, "t", 3),
            row(1, "t", 3),
            row(1, "u", 0),
            row(2, "t", 9),
            row(1, "t", 7),
        ];
        let t = StreamName::new("t").unwrap();
        let told = stored(&rows, [(DeviceId([2; 16]), &t, 9)]);
        let run = |s: &str, from, to| Run { stream: s.into(), from, to };
        assert_eq!(told[&DeviceId([1; 16])].batches, [run("t", 2, 4), run("t", 7, 7), run("u", 0, 0)]);
        assert_eq!(told[&DeviceId([2; 16])].batches, [run("t", 9, 9)]);
        assert_eq!(told[&DeviceId([2; 16])].checkpoints, [StoredCheckpoint { stream: "t".into(), seq: 9 }]);
        let json = serde_json::to_string(&told[&DeviceId([2; 16])]).unwrap();
        assert_eq!(json, r#"{"batches":[{"stream":"t","from":9,"to":9}],"checkpoints":[{"stream":"t","seq":9}]}"#);
        // A device reads what it knows of a newer ingest's word.
        let newer: Stored = serde_json::from_str(r#"{"batches":[],"later":1}"#).unwrap();
        assert_eq!(newer, Stored::default());
    }
}
