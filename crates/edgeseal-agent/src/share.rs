//! Sharing: topics, grants given and received, and the receiving side
//! (`watch` and the inbox of `up`).
//!
//! Topics, under the configured prefix (default `edgeseal/v1`):
//! - `PREFIX/<device>/<stream>/batch`: every sealed batch, QoS 1, the same bytes the store holds;
//! - `PREFIX/<device>/<stream>/live`: a signed live frame per journal commit of a granted stream, QoS 0;
//! - `PREFIX/<owner>/<stream>/grant/<peer>`: the owner's latest grant to that peer, retained;
//! - `PREFIX/<owner>/grants/<peer>`: every current grant to that peer in one retained message
//!   (JSON `{"grants": [base64, …]}`, each verified as if it came alone), on a topic with no
//!   wildcard: RabbitMQ's MQTT delivers retained messages only to exact subscriptions, so a
//!   peer that was away when it was granted still learns of it;
//! - `PREFIX/<owner>/<stream>/request/<peer>`: a peer asks for batches it missed (JSON `{"from", "to"}`);
//! - `PREFIX/<owner>/<stream>/repair/<peer>`: the owner's answer, the same sealed bytes, QoS 1;
//! - `PREFIX/pair/<channel>/<host|joiner>`: pairing messages.
//!
//! `<stream>` is the stream's name with each `.` written `~` ([`level`]): a
//! `.` is legal in a stream name, but NATS's MQTT refuses it in a topic and
//! RabbitMQ's maps it to a level separator; `~` is in no stream name and
//! every broker takes it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use edgeseal_core::chain::Head;
use edgeseal_core::envelope::{self, Authorship, BatchHash};
use edgeseal_core::keys::{EpochKeys, Identity, TreeNode};
use edgeseal_core::{DeviceId, Readings, StreamName};
use edgeseal_core::{frame, grant};
use edgeseal_mqtt::link::{Link, Message};
use edgeseal_store::BatchRow;
use edgeseal_store::local::{GrantOut, LocalState, PeerRow};
use tracing::{debug, info, warn};

use crate::config::TentativeLimits;
use crate::error::LocalContext;
use crate::{Error, Result, now_ms};

/// Why the inbox refused a message (shown, logged, never fatal).
fn refuse<T>(why: impl Into<String>) -> Result<T> {
    Err(Error::BadInput(why.into()))
}

/// Topic names under one prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

/// What a topic carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Topic {
    Batch {
        device: DeviceId,
        stream: StreamName,
    },
    Live {
        device: DeviceId,
        stream: StreamName,
    },
    Grant {
        owner: DeviceId,
        stream: StreamName,
        peer: DeviceId,
    },
    Grants {
        owner: DeviceId,
        peer: DeviceId,
    },
    Request {
        owner: DeviceId,
        stream: StreamName,
        peer: DeviceId,
    },
    Repair {
        owner: DeviceId,
        stream: StreamName,
        peer: DeviceId,
    },
    /// A device's signed checkpoint, for `edgeseal ingest` to store.
    Checkpoint {
        device: DeviceId,
        stream: StreamName,
    },
    /// A device's signed retention record, for `edgeseal ingest` to apply.
    Retention {
        device: DeviceId,
        stream: StreamName,
    },
    /// What an ingest process stored of a device's batches and checkpoints (`store = "broker"`).
    Stored {
        device: DeviceId,
    },
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        Topics { prefix: prefix.to_string() }
    }

    pub fn batch(&self, device: DeviceId, stream: &StreamName) -> String {
        format!("{}/{device}/{}/batch", self.prefix, level(stream))
    }

    pub fn live(&self, device: DeviceId, stream: &StreamName) -> String {
        format!("{}/{device}/{}/live", self.prefix, level(stream))
    }

    pub fn grant(&self, owner: DeviceId, stream: &StreamName, peer: DeviceId) -> String {
        format!("{}/{owner}/{}/grant/{peer}", self.prefix, level(stream))
    }

    pub fn checkpoint(&self, device: DeviceId, stream: &StreamName) -> String {
        format!("{}/{device}/{}/checkpoint", self.prefix, level(stream))
    }

    pub fn retention(&self, device: DeviceId, stream: &StreamName) -> String {
        format!("{}/{device}/{}/retention", self.prefix, level(stream))
    }

    /// Where ingest processes tell `device` what they stored of it.
    pub fn stored(&self, device: DeviceId) -> String {
        format!("{}/{device}/stored", self.prefix)
    }

    /// Every grant of `owner` to `peer`, on an exact topic.
    pub fn grants(&self, owner: DeviceId, peer: DeviceId) -> String {
        format!("{}/{owner}/grants/{peer}", self.prefix)
    }

    pub fn request(&self, owner: DeviceId, stream: &StreamName, peer: DeviceId) -> String {
        format!("{}/{owner}/{}/request/{peer}", self.prefix, level(stream))
    }

    pub fn repair(&self, owner: DeviceId, stream: &StreamName, peer: DeviceId) -> String {
        format!("{}/{owner}/{}/repair/{peer}", self.prefix, level(stream))
    }

    /// Where peers ask this agent for batches they missed.
    pub fn requests_to(&self, me: DeviceId) -> String {
        format!("{}/{me}/+/request/+", self.prefix)
    }

    pub fn pair(&self, channel: u16, side: &str) -> String {
        format!("{}/pair/{channel}/{side}", self.prefix)
    }

    /// The filters a receiver subscribes to for one peer.
    pub fn peer_filters(&self, peer: DeviceId, me: DeviceId) -> [String; 5] {
        [
            self.grants(peer, me),
            format!("{}/{peer}/+/batch", self.prefix),
            format!("{}/{peer}/+/live", self.prefix),
            format!("{}/{peer}/+/grant/{me}", self.prefix),
            format!("{}/{peer}/+/repair/{me}", self.prefix),
        ]
    }

    pub fn parse(&self, topic: &str) -> Option<Topic> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [device, stream, "batch"] => Some(Topic::Batch { device: device.parse().ok()?, stream: unlevel(stream)? }),
            [device, stream, "live"] => Some(Topic::Live { device: device.parse().ok()?, stream: unlevel(stream)? }),
            [device, stream, "checkpoint"] => {
                Some(Topic::Checkpoint { device: device.parse().ok()?, stream: unlevel(stream)? })
            }
            [device, stream, "retention"] => {
                Some(Topic::Retention { device: device.parse().ok()?, stream: unlevel(stream)? })
            }
            [device, "stored"] => Some(Topic::Stored { device: device.parse().ok()? }),
            [owner, "grants", peer] => Some(Topic::Grants { owner: owner.parse().ok()?, peer: peer.parse().ok()? }),
            [owner, stream, kind @ ("grant" | "request" | "repair"), peer] => {
                let (owner, stream, peer) = (owner.parse().ok()?, unlevel(stream)?, peer.parse().ok()?);
                Some(match *kind {
                    "grant" => Topic::Grant { owner, stream, peer },
                    "request" => Topic::Request { owner, stream, peer },
                    _ => Topic::Repair { owner, stream, peer },
                })
            }
            _ => None,
        }
    }
}

/// A stream's name as a topic level: each `.` written `~`.
pub fn level(stream: &StreamName) -> String {
    stream.as_str().replace('.', "~")
}

/// The stream a topic level names (`~` for `.`; a raw `.`, from a broker that passes it, is read too).
fn unlevel(level: &str) -> Option<StreamName> {
    StreamName::new(level.replace('~', ".")).ok()
}

/// Finds a peer by name, device id (or a prefix of at least 6 hex digits) or fingerprint.
pub fn find_peer<'a>(peers: &'a [PeerRow], what: &str) -> Result<&'a PeerRow> {
    let w = what.trim().to_ascii_lowercase();
    let hits: Vec<&PeerRow> = peers
        .iter()
        .filter(|p| {
            p.name.to_ascii_lowercase() == w
                || (w.len() >= 6 && p.device.to_string().starts_with(&w))
                || p.public.fingerprint() == w
        })
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] if peers.is_empty() => {
            Err(Error::NoSuchPeer(format!("no peer {what:?}: this agent has no peers yet (pair with `edgeseal pair`)")))
        }
        [] => Err(Error::NoSuchPeer(format!(
            "no peer {what:?}; peers: {}",
            peers
                .iter()
                .map(|p| format!("{} ({})", p.name, p.device.to_string().get(..8).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        _ => Err(Error::NoSuchPeer(format!("{what:?} names more than one peer: use its device id"))),
    }
}

/// The system's cryptographic random number generator, for the core's key exchanges.
pub fn rng() -> spake2::UnwrapErr<spake2::SysRng> {
    spake2::UnwrapErr(spake2::SysRng)
}

/// The reading times at which a grant of `from_ms..=to_ms` begins and ends
/// after: no batch or live frame may hold readings from both sides of one,
/// since a peer opens only what begins inside its grant.
pub fn grant_times(from_ms: i64, to_ms: Option<i64>) -> Vec<i64> {
    std::iter::once(from_ms).chain(to_ms.and_then(|t| t.checked_add(1))).collect()
}

/// Per stream, the [`grant_times`] of every grant in force, ascending.
pub fn cut_times(grants: &[GrantOut]) -> HashMap<StreamName, Vec<i64>> {
    let mut cuts: HashMap<StreamName, Vec<i64>> = HashMap::new();
    for g in grants.iter().filter(|g| !g.revoked) {
        cuts.entry(g.stream.clone()).or_default().extend(grant_times(g.from_ms, g.to_ms));
    }
    for times in cuts.values_mut() {
        times.sort_unstable();
        times.dedup();
    }
    cuts
}

/// Grants given by this agent: issuing, re-issuing on a new epoch, revoking.
#[derive(Debug)]
pub struct Grants<'a> {
    pub identity: &'a Identity,
    pub local: &'a LocalState,
}

impl Grants<'_> {
    /// Issues (and stores, unpublished) a grant to `peer` of the batches that
    /// begin in `from_ms..=to_ms`, in epochs `first_epoch..=current`: in each
    /// epoch, the few nodes of its key tree that hold exactly that time.
    async fn issue(
        &self,
        peer: &PeerRow,
        stream: &StreamName,
        (from_ms, to_ms): (i64, Option<i64>),
        first_epoch: u32,
    ) -> Result<GrantOut> {
        let current = self.local.stream_state(stream).await.local()?.epoch;
        let first = first_epoch.max(current.saturating_sub(GRANT_EPOCHS - 1));
        let until = to_ms.unwrap_or(i64::MAX);
        let keys: Vec<(u32, TreeNode)> = (first..=current)
            .flat_map(|e| {
                grant::range_nodes(&self.identity.epoch_key(stream, e), from_ms, until).into_iter().map(move |n| (e, n))
            })
            .collect();
        let terms = grant::Terms { issued_ms: now_ms(), from_ms, to_ms: until };
        let bytes = grant::issue(self.identity, &peer.public, stream, terms, &keys, &mut rng())?;
        let g = GrantOut {
            peer: peer.device,
            stream: stream.clone(),
            from_ms,
            to_ms,
            first_epoch,
            revoked: false,
            grant: bytes,
            published: false,
        };
        self.local.put_grant_out(&g).await.local()?;
        Ok(g)
    }

    /// Grants `stream` to `peer`: the batches that begin from `from_ms` up to
    /// `to_ms` (no end when `None`), and nothing sealed before or after.
    /// Returns the current epoch.
    pub async fn share(&self, peer: &PeerRow, stream: &StreamName, from_ms: i64, to_ms: Option<i64>) -> Result<u32> {
        if to_ms.is_some_and(|t| t < from_ms) {
            return Err(Error::BadInput("--to is before --from: that grants nothing".into()));
        }
        let first_epoch = self.local.epoch_at(stream, from_ms).await.local()?;
        let g = self.issue(peer, stream, (from_ms, to_ms), first_epoch).await?;
        Ok(self.local.stream_state(&g.stream).await.local()?.epoch)
    }

    /// Starts a new epoch of `stream` and re-issues every live grant of it, so
    /// the remaining peers receive the new key. Returns the new epoch.
    pub async fn rotate(&self, stream: &StreamName) -> Result<u32> {
        let epoch = self.local.rotate_epoch(stream, now_ms()).await.local()?;
        let peers = self.local.peers().await.local()?;
        for g in self.local.grants_out().await.local()? {
            if g.stream == *stream
                && !g.revoked
                && let Some(p) = peers.iter().find(|p| p.device == g.peer)
            {
                self.issue(p, stream, (g.from_ms, g.to_ms), g.first_epoch).await?;
            }
        }
        Ok(epoch)
    }

    /// Revokes `peer` from `streams` (every stream granted to it when empty):
    /// a signed empty grant replaces its grant and each stream moves to a new
    /// epoch that only the remaining peers receive. Returns the streams revoked.
    pub async fn revoke(&self, peer: &PeerRow, streams: &[StreamName]) -> Result<Vec<StreamName>> {
        let mut done = Vec::new();
        for g in self.local.grants_out().await.local()? {
            if g.peer != peer.device || g.revoked || !(streams.is_empty() || streams.contains(&g.stream)) {
                continue;
            }
            let terms = grant::Terms { issued_ms: now_ms(), from_ms: g.from_ms, to_ms: g.to_ms.unwrap_or(i64::MAX) };
            let bytes = grant::issue(self.identity, &peer.public, &g.stream, terms, &[], &mut rng())?;
            self.local
                .put_grant_out(&GrantOut { revoked: true, grant: bytes, published: false, ..g.clone() })
                .await
                .local()?;
            self.rotate(&g.stream).await?;
            done.push(g.stream);
        }
        Ok(done)
    }

    /// Publishes (retained) every grant not yet published, or with `all`
    /// every current one again (after a reconnect: a broker that lost its
    /// retained messages has them back). Returns how many went out.
    pub async fn publish(&self, link: &Link, topics: &Topics, all: bool) -> Result<usize> {
        use base64::Engine as _;
        let me = self.identity.device_id();
        let grants = self.local.grants_out().await.local()?;
        let sent: Vec<&GrantOut> = grants.iter().filter(|g| all || !g.published).collect();
        for g in &sent {
            link.publish(&topics.grant(me, &g.stream, g.peer), g.grant.clone(), true).await.map_err(|e| {
                Error::BrokerUnreachable(format!("cannot publish the grant of {} to the broker: {e}", g.stream))
            })?;
        }
        let mut changed: Vec<DeviceId> = sent.iter().map(|g| g.peer).collect();
        changed.sort();
        changed.dedup();
        // Each peer's index of every grant to it, after its grants (so a broker that keeps order has them first).
        for peer in &changed {
            let all_to_peer: Vec<String> = grants
                .iter()
                .filter(|g| g.peer == *peer)
                .map(|g| base64::engine::general_purpose::STANDARD.encode(&g.grant))
                .collect();
            let index = serde_json::to_vec(&serde_json::json!({ "grants": all_to_peer })).unwrap_or_default();
            link.publish(&topics.grants(me, *peer), index, true).await.map_err(|e| {
                Error::BrokerUnreachable(format!("cannot publish the grants of {peer} to the broker: {e}"))
            })?;
        }
        for g in &sent {
            self.local.grant_published(g.peer, &g.stream, &g.grant).await.local()?;
        }
        Ok(sent.len())
    }
}

/// Every key this agent can open batches with: its own streams' and those granted to it.
#[derive(Default, Debug)]
pub struct KeyRing {
    own: Option<(DeviceId, Arc<Identity>)>,
    granted: HashMap<(DeviceId, StreamName), BTreeMap<u32, EpochKeys>>,
    /// When the grant each entry of `granted` comes from was issued.
    issued: HashMap<(DeviceId, StreamName), i64>,
}

impl KeyRing {
    /// Own keys plus every stored grant (verified again against the peer's key).
    pub async fn load(identity: Arc<Identity>, local: &LocalState) -> Result<KeyRing> {
        let mut ring = KeyRing {
            own: Some((identity.device_id(), identity.clone())),
            granted: HashMap::new(),
            issued: HashMap::new(),
        };
        let peers = local.peers().await.local()?;
        for (owner, stream, bytes, _) in local.grants_in().await.local()? {
            let Some(p) = peers.iter().find(|p| p.device == owner) else { continue };
            match grant::open(&bytes, &identity, &p.public) {
                Ok(g) => ring.add(&g),
                Err(e) => warn!("a stored grant of {stream} from {} does not open: {e}", p.name),
            }
        }
        Ok(ring)
    }

    fn add(&mut self, g: &grant::Grant) {
        let at = (g.info.owner, g.info.stream.clone());
        let issued = self.issued.entry(at.clone()).or_insert(g.info.issued_ms);
        *issued = (*issued).max(g.info.issued_ms);
        let slot = self.granted.entry(at).or_default();
        for (e, node) in &g.keys {
            slot.entry(*e).or_default().add(node.clone());
        }
    }

    /// Adds the grants a store holds for this agent (`Store::grants_to`) from
    /// paired peers, where one is newer than what this agent received through
    /// the broker (or it received none): it replaces those keys, as a newer
    /// grant does. Revocations are left to the broker's word, like the
    /// received ones (the keys held still open what was sealed before).
    pub fn add_stored(&mut self, grants: &[Vec<u8>], peers: &[PeerRow]) {
        let Some((_, me)) = self.own.clone() else { return };
        for bytes in grants {
            let Ok(info) = grant::peek(bytes) else { continue };
            let Some(p) = peers.iter().find(|p| p.device == info.owner) else { continue };
            let at = (info.owner, info.stream.clone());
            if self.issued.get(&at).is_some_and(|&i| i >= info.issued_ms) {
                continue;
            }
            match grant::open(bytes, &me, &p.public) {
                Ok(g) if !g.is_revocation() => {
                    self.granted.remove(&at);
                    self.add(&g);
                }
                Ok(_) => {}
                Err(e) => warn!("a grant of {} from {} in the store does not open: {e}", info.stream, p.name),
            }
        }
    }

    /// Whether this agent holds any key of the stream: its own, or granted.
    pub fn holds(&self, device: DeviceId, stream: &StreamName) -> bool {
        self.own.as_ref().is_some_and(|(me, _)| *me == device) || self.granted.contains_key(&(device, stream.clone()))
    }

    /// What this agent holds of `epoch` of a stream: all of it for its own
    /// streams, the granted time of a peer's.
    pub fn key(&self, device: DeviceId, stream: &StreamName, epoch: u32) -> Option<EpochKeys> {
        match &self.own {
            Some((me, id)) if *me == device => Some(id.epoch_key(stream, epoch).into()),
            _ => self.granted.get(&(device, stream.clone()))?.get(&epoch).cloned(),
        }
    }
}

/// How a received batch relates to what came before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// The first batch seen of this stream.
    First,
    /// Follows the previous batch (number and hash).
    InOrder,
    /// Batches were missed (e.g. sent while this agent was offline and the broker kept no session).
    Gap { missing: u64 },
}

/// What the inbox made of a message.
#[derive(Debug)]
pub enum Event {
    /// A verified batch, opened. `readings` leaves out what a live frame showed already.
    Readings {
        peer: String,
        device: DeviceId,
        stream: StreamName,
        seq: u64,
        readings: Readings,
        arrival: Arrival,
    },
    /// A peer's live frame, verified (signed by the device) and opened: shown, never stored
    /// (the stored batch with the same readings follows). `missed` readings before it did not come live.
    Live {
        peer: String,
        device: DeviceId,
        stream: StreamName,
        pos: u64,
        readings: Readings,
        missed: u64,
    },
    /// A verified batch this agent has no key for (yet): kept, opened when a grant arrives.
    Locked {
        peer: String,
        stream: StreamName,
        seq: u64,
        epoch: u32,
    },
    /// A grant arrived: `epochs` keys, or a revocation.
    Granted {
        peer: String,
        stream: StreamName,
        epochs: usize,
    },
    Revoked {
        peer: String,
        stream: StreamName,
    },
    /// Batches `from..=to` of a peer's stream never arrived: ask the peer for them.
    Missing {
        device: DeviceId,
        stream: StreamName,
        from: u64,
        to: u64,
    },
    /// Missed batches that came back on request, verified through the chain and stored.
    Repaired {
        peer: String,
        stream: StreamName,
        from: u64,
        to: u64,
    },
    /// Something on a peer's topic that does not verify, or a replay: dropped.
    Refused {
        topic: String,
        reason: String,
    },
}

/// Verified batches without a key yet, kept per stream for when the grant arrives.
const LOCKED_MAX: usize = 1000;
/// Most epochs one grant reaches back (each needs up to 96 nodes of its key tree).
const GRANT_EPOCHS: u32 = 64;
/// An unsigned batch held until a signed batch covers it.
#[derive(Debug)]
struct Held {
    seq: u64,
    prev: BatchHash,
    bytes: Vec<u8>,
}

/// One stream's held unsigned batches, by hash: candidates, not state. Forged
/// ones may sit beside the device's own; the signed batch that ends a run
/// picks out the device's by the chain, and the rest are dropped.
#[derive(Debug, Default)]
struct Tentative {
    items: HashMap<BatchHash, Held>,
    bytes: usize,
}

impl Tentative {
    fn take(&mut self, hash: &BatchHash) -> Option<Held> {
        let h = self.items.remove(hash)?;
        self.bytes -= h.bytes.len();
        Some(h)
    }

    /// Drops the held batches whose chain does not reach `head` (nothing
    /// could ever cover them in order); returns how many bytes went.
    fn drop_unlinked(&mut self, head: Option<&Head>) -> usize {
        // Each batch's chain is walked down once: sequence numbers fall along it, so it ends.
        let mut reaches: HashMap<BatchHash, bool> = HashMap::with_capacity(self.items.len());
        for start in self.items.keys() {
            let (mut path, mut cur) = (Vec::new(), *start);
            let result = loop {
                if let Some(&known) = reaches.get(&cur) {
                    break known;
                }
                let h = &self.items[&cur];
                path.push(cur);
                let to_head = match head {
                    Some(t) => Some(h.seq) == t.seq.checked_add(1) && h.prev == t.hash,
                    None => h.seq == 0,
                };
                if to_head {
                    break true;
                }
                match self.items.get(&h.prev) {
                    Some(p) if p.seq.checked_add(1) == Some(h.seq) => cur = h.prev,
                    _ => break false,
                }
            };
            for p in path {
                reaches.insert(p, result);
            }
        }
        let linked: std::collections::HashSet<BatchHash> =
            reaches.into_iter().filter(|(_, r)| *r).map(|(h, _)| h).collect();
        let before = self.bytes;
        self.items.retain(|hash, _| linked.contains(hash));
        self.bytes = self.items.values().map(|h| h.bytes.len()).sum();
        before - self.bytes
    }
}

/// A peer's stream.
type PeerStream = (DeviceId, StreamName);

/// The receiving side: verifies, checks order and replay, opens, and queues for the store.
#[derive(Debug)]
pub struct Inbox {
    identity: Arc<Identity>,
    local: LocalState,
    topics: Topics,
    peers: HashMap<DeviceId, PeerRow>,
    keys: KeyRing,
    locked: HashMap<PeerStream, Vec<Vec<u8>>>,
    /// Unsigned batches waiting for the signed batch that covers them, within `limits`.
    held: HashMap<PeerStream, Tentative>,
    held_bytes: usize,
    pub limits: TentativeLimits,
    /// Each stream's live frames so far.
    live: HashMap<PeerStream, LiveMark>,
    /// Holes behind each stream's newest batch, asked for, with what came back so far.
    gaps: HashMap<PeerStream, Vec<Hole>>,
    /// Queue received batches for the store (`up`, and `watch` for the next `up` to store);
    /// a device whose batches go through ingest leaves them to it.
    pub store: bool,
}

/// Most batches asked for at once (a bigger hole is asked for from its top down).
pub const REPAIR_MAX: u64 = 1024;

/// Batches `from..=to` of a stream are missing; the batch after them names `top` as its predecessor.
/// (Recorded in state.db, so a hole open when the agent stops is asked for after it starts again.)
#[derive(Debug)]
struct Hole {
    from: u64,
    to: u64,
    top: BatchHash,
    /// What came back so far, by number.
    got: BTreeMap<u64, Vec<u8>>,
    asked: std::time::Instant,
    /// How long until it is asked for again.
    wait: std::time::Duration,
}

/// How long an open hole waits before it is asked for again, at first and at most.
const ASK_AGAIN: std::time::Duration = std::time::Duration::from_secs(3);
const ASK_AGAIN_MAX: std::time::Duration = std::time::Duration::from_secs(600);

impl Hole {
    /// The part asked for: the top `REPAIR_MAX` batches (they verify from the top down).
    fn wanted(&self) -> (u64, u64) {
        (self.from.max(self.to.saturating_sub(REPAIR_MAX - 1)), self.to)
    }
}

/// How far a peer stream's live frames went.
#[derive(Debug, Clone, Copy)]
struct LiveMark {
    /// The position after the last frame's readings: a frame must start at or after it.
    next_pos: u64,
    /// The newest reading a frame showed: batches show only what is newer.
    shown_ts: i64,
}

impl Inbox {
    pub async fn new(identity: Arc<Identity>, local: LocalState, topics: Topics) -> Result<Inbox> {
        let peers = local.peers().await.local()?.into_iter().map(|p| (p.device, p)).collect();
        let keys = KeyRing::load(identity.clone(), &local).await?;
        // Holes recorded before the last stop are asked for again at once.
        let mut gaps: HashMap<PeerStream, Vec<Hole>> = HashMap::new();
        for (device, stream, from, to, top) in local.holes().await.local()? {
            let asked = std::time::Instant::now().checked_sub(ASK_AGAIN).unwrap_or_else(std::time::Instant::now);
            let hole = Hole { from, to, top, got: BTreeMap::new(), asked, wait: ASK_AGAIN };
            gaps.entry((device, stream)).or_default().push(hole);
        }
        Ok(Inbox {
            identity,
            local,
            topics,
            peers,
            keys,
            locked: HashMap::new(),
            held: HashMap::new(),
            held_bytes: 0,
            limits: TentativeLimits::default(),
            live: HashMap::new(),
            gaps,
            store: false,
        })
    }

    /// Picks up peers paired since the inbox started (subscribing to them) and their grants.
    pub async fn refresh_peers(&mut self, link: &Link) -> Result<()> {
        let me = self.identity.device_id();
        for p in self.local.peers().await.local()? {
            if self.peers.contains_key(&p.device) {
                continue;
            }
            for f in self.topics.peer_filters(p.device, me) {
                link.subscribe(&f).await?;
            }
            info!("now receiving from {}", p.name);
            self.peers.insert(p.device, p);
        }
        Ok(())
    }

    /// Bytes of unsigned batches held until a signature covers them.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerRow> {
        self.peers.values()
    }

    /// Subscribes to every peer's batches and grants to this agent.
    pub async fn subscribe(&self, link: &Link) -> Result<()> {
        let me = self.identity.device_id();
        for p in self.peers.values() {
            for f in self.topics.peer_filters(p.device, me) {
                link.subscribe(&f).await?;
            }
        }
        Ok(())
    }

    pub async fn handle(&mut self, msg: &Message) -> Vec<Event> {
        let refused = |reason: String| vec![Event::Refused { topic: msg.topic.clone(), reason }];
        match self.topics.parse(&msg.topic) {
            Some(Topic::Batch { device, stream }) => match self.batch(device, &stream, &msg.payload).await {
                Ok(ev) => ev,
                Err(e) => refused(e.to_string()),
            },
            Some(Topic::Live { device, stream }) => match self.frame(device, &stream, &msg.payload).await {
                Ok(ev) => ev,
                Err(e) => refused(e.to_string()),
            },
            Some(Topic::Repair { owner, stream, peer }) if peer == self.identity.device_id() => {
                match self.repaired(owner, &stream, &msg.payload).await {
                    Ok(ev) => ev,
                    Err(e) => refused(e.to_string()),
                }
            }
            Some(Topic::Grants { owner, peer }) if peer == self.identity.device_id() => {
                if msg.payload.is_empty() {
                    return Vec::new();
                }
                self.grants(owner, &msg.payload).await.unwrap_or_else(|e| refused(e.to_string()))
            }
            Some(Topic::Grant { owner, stream, peer }) if peer == self.identity.device_id() => {
                if msg.payload.is_empty() {
                    return Vec::new(); // a cleared retained message
                }
                match self.grant(owner, &stream, &msg.payload).await {
                    Ok(ev) => ev,
                    Err(e) => refused(e.to_string()),
                }
            }
            _ => Vec::new(),
        }
    }

    /// A peer's index of its grants to this agent: each taken as if it came on its own topic.
    async fn grants(&mut self, owner: DeviceId, payload: &[u8]) -> Result<Vec<Event>> {
        use base64::Engine as _;
        #[derive(serde::Deserialize)]
        struct Index {
            grants: Vec<String>,
        }
        let index: Index =
            serde_json::from_slice(payload).or_else(|e| refuse(format!("a grant index that is not one: {e}")))?;
        let mut events = Vec::new();
        for (i, text) in index.grants.iter().enumerate().take(4096) {
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text) else {
                events.push(Event::Refused {
                    topic: format!("grant index of {owner}"),
                    reason: format!("entry {i} is not base64"),
                });
                continue;
            };
            // Which stream it claims; `grant` verifies the signature and that the stream is the one it grants.
            let stream = match grant::peek(&bytes) {
                Ok(info) => info.stream,
                Err(e) => {
                    let reason = format!("entry {i} is not a grant: {e}");
                    events.push(Event::Refused { topic: format!("grant index of {owner}"), reason });
                    continue;
                }
            };
            match self.grant(owner, &stream, &bytes).await {
                Ok(ev) => events.extend(ev),
                Err(e) => {
                    events.push(Event::Refused { topic: format!("grant index of {owner}"), reason: e.to_string() })
                }
            }
        }
        Ok(events)
    }

    async fn grant(&mut self, owner: DeviceId, stream: &StreamName, bytes: &[u8]) -> Result<Vec<Event>> {
        let Some(peer) = self.peers.get(&owner) else {
            return refuse(format!("a grant from {owner}, which is not a peer"));
        };
        let g = match grant::open(bytes, &self.identity, &peer.public) {
            Ok(g) => g,
            Err(e) => return refuse(format!("grant refused: {e}")),
        };
        if g.info.stream != *stream || g.info.owner != owner {
            return refuse(format!("grant refused: it is for {} of {}, not this topic", g.info.stream, g.info.owner));
        }
        let name = peer.name.clone();
        let fresh = self.local.put_grant_in(owner, stream, g.info.issued_ms, bytes, g.is_revocation()).await.local()?;
        if !fresh {
            debug!("an older or repeated grant of {stream} from {name}");
            return Ok(Vec::new());
        }
        if g.is_revocation() {
            return Ok(vec![Event::Revoked { peer: name, stream: stream.clone() }]);
        }
        self.keys.add(&g);
        let mut events = vec![Event::Granted {
            peer: name,
            stream: stream.clone(),
            epochs: g.keys.iter().map(|(e, _)| *e).collect::<std::collections::BTreeSet<_>>().len(),
        }];
        // Batches that arrived before their key: open them now.
        for bytes in self.locked.remove(&(owner, stream.clone())).unwrap_or_default() {
            let p = parse(&bytes)?;
            events.extend(self.open_verified(&p, &bytes, Arrival::InOrder)?);
        }
        Ok(events)
    }

    /// A sealed batch on `device`'s `stream` topic, checked as far as its bytes
    /// alone allow: from a paired peer, of that device and stream, and signed by
    /// the device or not signed. Returns it parsed, with its hash and whether it is signed.
    fn checked<'b>(
        &self,
        device: DeviceId,
        stream: &StreamName,
        bytes: &'b [u8],
    ) -> Result<(envelope::Parsed<'b>, BatchHash, bool)> {
        let Some(peer) = self.peers.get(&device) else {
            return refuse(format!("a batch from {device}, which is not a peer"));
        };
        let p = parse(bytes)?;
        let h = &p.header;
        if h.device != device || h.stream != *stream {
            return refuse(format!(
                "batch {} of {} of {} was published on another device's or stream's topic",
                h.seq, h.stream, h.device
            ));
        }
        let hash = p.hash();
        let signed = match p.authorship(&hash) {
            // The device id is a hash of the signer's key: this is the paired peer's key.
            Authorship::Device => true,
            // Authentic once a signed batch covers it through the chain (format.md); held until then.
            Authorship::Unsigned => false,
            _ => {
                return refuse(format!(
                    "batch {} of {stream} is not signed by {} (forged or altered)",
                    h.seq, peer.name
                ));
            }
        };
        Ok((p, hash, signed))
    }

    async fn batch(&mut self, device: DeviceId, stream: &StreamName, bytes: &[u8]) -> Result<Vec<Event>> {
        let (p, hash, signed) = self.checked(device, stream, bytes)?;
        let h = &p.header;
        let head = self.local.remembered(device, stream).await.local()?;
        if head.is_some_and(|last| last.seq == h.seq && last.hash == hash) {
            // The batch taken last, delivered again (QoS 1 does that; so does the agent's session
            // after `watch` took it): nothing new, nothing wrong.
            return Ok(Vec::new());
        }
        if let Some(last) = &head
            && h.seq <= last.seq
        {
            return refuse(format!(
                "batch {} of {stream} replayed or out of order (already have up to {})",
                h.seq, last.seq
            ));
        }
        let slot = (device, stream.clone());
        if !signed {
            // Nothing is recorded, stored or shown on the strength of an unsigned batch.
            return self.hold(&slot, Held { seq: h.seq, prev: h.prev, bytes: bytes.to_vec() }, hash, head.as_ref());
        }
        // The signed batch covers the held run that ends at it, back to the newest authentic batch.
        let mut run: Vec<Held> = Vec::new();
        let (mut seq, mut prev) = (h.seq, h.prev);
        let arrival = loop {
            if let Some(last) = &head
                && Some(seq) == last.seq.checked_add(1)
            {
                if prev != last.hash {
                    return refuse(format!(
                        "batch {seq} of {stream} does not follow batch {} (a fork or a forgery)",
                        last.seq
                    ));
                }
                break Arrival::InOrder;
            }
            let tentative = self.held.get_mut(&slot);
            match tentative
                .and_then(|t| t.items.get(&prev).is_some_and(|c| c.seq.checked_add(1) == Some(seq)).then_some(t))
            {
                Some(t) if seq > 0 => {
                    let c = t.take(&prev).expect("present");
                    self.held_bytes -= c.bytes.len();
                    (seq, prev) = (c.seq, c.prev);
                    run.push(c);
                }
                _ => match &head {
                    None => break Arrival::First,
                    Some(last) => break Arrival::Gap { missing: seq - last.seq - 1 },
                },
            }
        };
        // Before a hole, the held batches the signed batch vouches for by hash
        // (format v2 covers) are authentic on their own: a batch lost or
        // altered on the way costs only itself.
        let mut before: Vec<Held> = Vec::new();
        let mut arrival = arrival;
        if let (Arrival::Gap { .. }, Some(last)) = (&arrival, &head)
            && let Some(t) = self.held.get_mut(&slot)
        {
            let (mut next, mut link) = (last.seq + 1, last.hash);
            while next < seq {
                let Some(&covered) = h.covered(next) else { break };
                match t.items.get(&covered) {
                    Some(c) if c.seq == next && c.prev == link => {
                        let c = t.take(&covered).expect("present");
                        self.held_bytes -= c.bytes.len();
                        before.push(c);
                        (next, link) = (next + 1, covered);
                    }
                    _ => break,
                }
            }
            if !before.is_empty() {
                arrival = Arrival::Gap { missing: seq - next };
            }
        }
        let mut events = Vec::new();
        if let (Arrival::Gap { .. }, Some(last)) = (&arrival, &head) {
            // `seq` and `prev` are those of the first batch after the hole.
            let hole = Hole {
                from: last.seq + 1 + before.len() as u64,
                to: seq - 1,
                top: prev,
                got: BTreeMap::new(),
                asked: std::time::Instant::now(),
                wait: ASK_AGAIN,
            };
            let (from, to) = hole.wanted();
            self.local.set_hole(device, stream, hole.from, hole.to, hole.top).await.local()?;
            self.gaps.entry(slot.clone()).or_default().push(hole);
            events.push(Event::Missing { device, stream: stream.clone(), from, to });
        }
        // What is left at or before the signed batch is not on its chain: forged, or cut off by a gap.
        if let Some(t) = self.held.get_mut(&slot) {
            let before = t.items.len();
            let freed: usize = t.items.values().filter(|c| c.seq <= h.seq).map(|c| c.bytes.len()).sum();
            t.items.retain(|_, c| c.seq > h.seq);
            t.bytes -= freed;
            self.held_bytes -= freed;
            let dropped = before - t.items.len();
            if dropped > 0 {
                events.push(Event::Refused {
                    topic: self.topics.batch(device, stream),
                    reason: format!(
                        "{dropped} unsigned batch(es) of {stream} up to batch {} are not on the chain its signature covers (forged, or cut off by a gap): dropped",
                        h.seq
                    ),
                });
            }
        }
        let (mut how, first) = if before.is_empty() { (arrival, None) } else { (Arrival::InOrder, Some(arrival)) };
        let after_hole = before.len();
        let authentic =
            before.into_iter().chain(run.into_iter().rev()).map(|c| c.bytes).chain(std::iter::once(bytes.to_vec()));
        for (i, b) in authentic.enumerate() {
            if i == after_hole
                && let Some(a) = &first
            {
                how = a.clone();
            }
            let q = parse(&b)?;
            let q_hash = q.hash();
            let row = BatchRow::new(q.header.clone(), q_hash, b.clone());
            self.local
                .remember(device, stream, Head { seq: q.header.seq, hash: q_hash, ts: q.header.last_ts })
                .await
                .local()?;
            if self.store {
                self.local.commit_received(&row).await.local()?;
            }
            events.extend(self.open_verified(&q, &b, std::mem::replace(&mut how, Arrival::InOrder))?);
        }
        Ok(events)
    }

    /// Holds an unsigned batch as a candidate until a signature covers it,
    /// within the per-stream and total byte bounds: when full, held batches
    /// that cannot reach the newest authentic one go first, then the newcomer
    /// is refused.
    fn hold(&mut self, slot: &PeerStream, c: Held, hash: BatchHash, head: Option<&Head>) -> Result<Vec<Event>> {
        let stream = &slot.1;
        let size = c.bytes.len();
        let t = self.held.entry(slot.clone()).or_default();
        if t.items.contains_key(&hash) {
            return Ok(Vec::new()); // the same batch again
        }
        let over =
            |t: &Tentative, total: usize, l: &TentativeLimits| t.bytes + size > l.stream || total + size > l.total;
        let mut events = Vec::new();
        if over(t, self.held_bytes, &self.limits) {
            let freed = t.drop_unlinked(head);
            self.held_bytes -= freed;
            if freed > 0 {
                events.push(Event::Refused {
                    topic: self.topics.batch(slot.0, stream),
                    reason: format!(
                        "dropped {freed} bytes of unsigned batches of {stream} that do not link to the newest authentic batch (the tentative buffer is full)"
                    ),
                });
            }
        }
        if over(t, self.held_bytes, &self.limits) {
            events.push(Event::Refused {
                topic: self.topics.batch(slot.0, stream),
                reason: format!(
                    "batch {} of {stream} is unsigned and the buffer of batches waiting for a signature is full ({} of {} bytes for this stream, {} of {} in all)",
                    c.seq, t.bytes, self.limits.stream, self.held_bytes, self.limits.total
                ),
            });
            return Ok(events);
        }
        t.bytes += size;
        self.held_bytes += size;
        t.items.insert(hash, c);
        Ok(events)
    }

    /// Holes to ask for (again): each at most every few seconds, while it is still open.
    pub fn due_requests(&mut self) -> Vec<(DeviceId, StreamName, u64, u64)> {
        let mut out = Vec::new();
        for ((device, stream), holes) in &mut self.gaps {
            for h in holes.iter_mut().filter(|h| h.asked.elapsed() >= h.wait) {
                h.asked = std::time::Instant::now();
                // A hole that stays open (the device cannot send it) is asked for less and less often.
                h.wait = (h.wait * 2).min(ASK_AGAIN_MAX);
                let (from, to) = h.wanted();
                out.push((*device, stream.clone(), from, to));
            }
        }
        out
    }

    /// A batch the peer sent back on request (the device sends the newest
    /// first): kept with its hole, and from the hole's top down, as far as
    /// they go, verified (each batch's hash is what its successor names) and
    /// stored; the hole shrinks to what is still missing.
    async fn repaired(&mut self, device: DeviceId, stream: &StreamName, bytes: &[u8]) -> Result<Vec<Event>> {
        let (p, _, _) = self.checked(device, stream, bytes)?;
        let h = &p.header;
        let peer = self.peers.get(&device).map(|p| p.name.clone()).unwrap_or_default();
        let slot = (device, stream.clone());
        let Some(holes) = self.gaps.get_mut(&slot) else {
            return Ok(Vec::new()); // nothing missing (any more): a late or repeated answer
        };
        let Some(hole) = holes.iter_mut().find(|x| (x.from..=x.to).contains(&h.seq)) else {
            return Ok(Vec::new());
        };
        if hole.got.len() as u64 >= REPAIR_MAX {
            return refuse(format!("batch {} of {stream} sent as a repair, but enough are waiting", h.seq));
        }
        hole.got.insert(h.seq, bytes.to_vec());
        let top = hole.to;
        let (mut rows, mut events) = (Vec::new(), Vec::new());
        while let Some(b) = hole.got.remove(&hole.to) {
            let q = parse(&b)?;
            let q_hash = q.hash();
            if q_hash != hole.top {
                events.push(Event::Refused {
                    topic: self.topics.repair(device, stream, self.identity.device_id()),
                    reason: format!(
                        "batch {} of {stream} sent as a repair is not the one the chain names",
                        q.header.seq
                    ),
                });
                break;
            }
            hole.top = q.header.prev;
            rows.push(BatchRow::new(q.header.clone(), q_hash, b));
            if hole.to == hole.from {
                break;
            }
            hole.to -= 1;
        }
        let Some(lowest) = rows.last().map(|r| r.seq) else {
            return Ok(events);
        };
        hole.wait = ASK_AGAIN;
        // What is still missing, for after a restart: nothing (`to < from`; a hole starts after batch 0) once filled.
        let (from, top_hash) = (hole.from, hole.top);
        let to = if lowest == from { from.saturating_sub(1) } else { hole.to };
        if lowest == from {
            holes.retain(|x| x.from != lowest);
        }
        self.local.set_hole(device, stream, from, to, top_hash).await.local()?;
        if self.store {
            for row in rows.iter().rev() {
                self.local.commit_received(row).await.local()?;
            }
        }
        events.push(Event::Repaired { peer, stream: stream.clone(), from: lowest, to: top });
        Ok(events)
    }

    /// A live frame: shown only if the device signed it, it moves forward
    /// (position and time) and this agent holds its key; never stored.
    async fn frame(&mut self, device: DeviceId, stream: &StreamName, bytes: &[u8]) -> Result<Vec<Event>> {
        let Some(peer) = self.peers.get(&device) else {
            return refuse(format!("a live frame from {device}, which is not a peer"));
        };
        let p = frame::parse_frame(bytes).map_err(|e| Error::BadInput(format!("not a live frame: {e}")))?;
        let h = &p.header;
        if h.device != device || h.stream != *stream {
            return refuse(format!(
                "live frame {} of {} of {} was published on another device's or stream's topic",
                h.pos, h.stream, h.device
            ));
        }
        if p.authorship() != Authorship::Device {
            return refuse(format!(
                "live frame {} of {stream} is not signed by {} (forged or altered)",
                h.pos, peer.name
            ));
        }
        let slot = (device, stream.clone());
        let mark = self.live.get(&slot).copied();
        if let Some(m) = mark
            && h.pos < m.next_pos
        {
            return refuse(format!(
                "live frame {} of {stream} replayed or out of order (frames already reached {})",
                h.pos, m.next_pos
            ));
        }
        // Before the first frame since this agent started: nothing older than what is stored.
        if let Some(head) = self.local.remembered(device, stream).await.local()?
            && h.last_ts <= head.ts
        {
            // A replay, a late frame, or readings timed before what is stored (a backfill): nothing to show.
            debug!("live frame {} of {stream} is no newer than the batches received: not shown", h.pos);
            return Ok(Vec::new());
        }
        let Some(key) = self.keys.key(device, stream, h.epoch) else {
            debug!("a live frame of {}/{stream} under epoch {}, not granted (yet)", peer.name, h.epoch);
            return Ok(Vec::new());
        };
        let readings = match p.open(&key) {
            Ok(r) => r,
            Err(edgeseal_core::Error::NotGranted) => {
                debug!("live frame {} of {}/{stream} is outside the time granted: not shown", h.pos, peer.name);
                return Ok(Vec::new());
            }
            Err(e) => return refuse(format!("live frame {} of {stream} does not open: {e}", h.pos)),
        };
        let missed = mark.map_or(0, |m| h.pos - m.next_pos);
        let next_pos = h.pos.saturating_add(u64::from(h.count));
        let shown_ts = mark.map_or(h.last_ts, |m| m.shown_ts.max(h.last_ts));
        self.live.insert(slot, LiveMark { next_pos, shown_ts });
        let peer = peer.name.clone();
        Ok(vec![Event::Live { peer, device, stream: stream.clone(), pos: h.pos, readings, missed }])
    }

    /// Opens a batch already verified (`p` is `bytes` parsed), or keeps it until its key arrives.
    fn open_verified(&mut self, p: &envelope::Parsed<'_>, bytes: &[u8], arrival: Arrival) -> Result<Vec<Event>> {
        let (device, stream) = (p.header.device, &p.header.stream);
        let peer = self.peers.get(&device).map(|p| p.name.clone()).unwrap_or_default();
        let Some(key) = self.keys.key(device, stream, p.header.epoch) else {
            let slot = self.locked.entry((device, stream.clone())).or_default();
            let first = slot.is_empty();
            if slot.len() < LOCKED_MAX {
                slot.push(bytes.to_vec());
            }
            if !first {
                // Said once per spell without a key (not once per batch, twice a second).
                debug!(
                    "batch {} of {peer}/{stream} is kept sealed too: no key for epoch {}",
                    p.header.seq, p.header.epoch
                );
                return Ok(Vec::new());
            }
            return Ok(vec![Event::Locked { peer, stream: stream.clone(), seq: p.header.seq, epoch: p.header.epoch }]);
        };
        let mut readings = match p.open(&key) {
            Ok(r) => r,
            Err(edgeseal_core::Error::NotGranted) => {
                debug!("batch {} of {peer}/{stream} begins outside the time granted: kept, not shown", p.header.seq);
                return Ok(Vec::new());
            }
            Err(e) => return refuse(format!("batch {} of {stream} does not open: {e}", p.header.seq)),
        };
        if let Some(m) = self.live.get(&(device, stream.clone())) {
            readings.retain_after(m.shown_ts);
        }
        Ok(vec![Event::Readings { peer, device, stream: stream.clone(), seq: p.header.seq, readings, arrival }])
    }
}

fn parse(bytes: &[u8]) -> Result<envelope::Parsed<'_>> {
    envelope::parse(bytes).map_err(|e| Error::BadInput(format!("not a sealed batch: {e}")))
}

/// Logs what the agent's inbox did.
pub fn log_event(e: &Event) {
    match e {
        Event::Readings { peer, stream, seq, readings, arrival, .. } => {
            if let Arrival::Gap { missing } = arrival {
                warn!("{missing} batch(es) of {peer}/{stream} before batch {seq} never arrived");
            }
            debug!("received batch {seq} of {peer}/{stream} ({} readings not shown live)", readings.len());
        }
        Event::Live { peer, stream, pos, readings, missed, .. } => {
            if *missed > 0 {
                debug!(
                    "{missed} live reading(s) of {peer}/{stream} before {pos} did not arrive live (they come with the stored batch)"
                );
            }
            debug!("live frame {pos} of {peer}/{stream} ({} readings)", readings.len());
        }
        Event::Locked { peer, stream, seq, epoch } => {
            info!(
                "batch {seq} of {peer}/{stream} is sealed under epoch {epoch}, which {peer} has not granted this agent: it and those after it are kept sealed (said once)"
            )
        }
        Event::Granted { peer, stream, epochs } => info!("{peer} granted {stream} ({epochs} key epoch(s))"),
        Event::Revoked { peer, stream } => info!("{peer} revoked this agent's access to {stream}"),
        Event::Missing { stream, from, to, .. } => {
            info!("asking for batches {from}..={to} of {stream}, which never arrived")
        }
        Event::Repaired { peer, stream, from, to } => {
            info!(
                "batches {from}..={to} of {peer}/{stream} arrived on request, verified through the chain, and are stored"
            )
        }
        Event::Refused { topic, reason } => {
            // Per topic's publisher and stream (not per message), so a flood is a line a minute.
            let kind = format!("refused {}", topic.rsplit_once('/').map_or(topic.as_str(), |(t, _)| t));
            crate::quiet::once_a_minute(&kind, |more| warn!("refused a message on {topic}: {reason}{more}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dot_in_a_stream_name_is_a_tilde_in_its_topic() {
        let t = Topics::new("edgeseal/v1");
        let (dev, stream) = (DeviceId([7; 16]), StreamName::new("room.temperature").unwrap());
        let topic = t.batch(dev, &stream);
        assert_eq!(topic, format!("edgeseal/v1/{dev}/room~temperature/batch"));
        assert_eq!(t.parse(&topic), Some(Topic::Batch { device: dev, stream: stream.clone() }));
        let grant = t.grant(dev, &stream, dev);
        assert_eq!(t.parse(&grant), Some(Topic::Grant { owner: dev, stream: stream.clone(), peer: dev }));
        // A raw `.`, as a broker that passes it delivers an older agent's topic, is read too.
        assert_eq!(
            t.parse(&format!("edgeseal/v1/{dev}/room.temperature/live")),
            Some(Topic::Live { device: dev, stream })
        );
    }
    use edgeseal_core::envelope::{SealParams, seal};
    use edgeseal_core::{ScalarBatch, envelope::BatchHash};

    /// A batch of `owner`'s `stream` holding one reading of `value`, linked to `prev`.
    fn batch(owner: &Identity, seq: u64, prev: BatchHash, value: f64, signed: bool) -> (Vec<u8>, BatchHash) {
        covering(owner, seq, prev, value, signed, Vec::new())
    }

    /// [`batch`], vouching for the hashes of the batches before it.
    fn covering(
        owner: &Identity,
        seq: u64,
        prev: BatchHash,
        value: f64,
        signed: bool,
        covers: Vec<BatchHash>,
    ) -> (Vec<u8>, BatchHash) {
        let stream = StreamName::new("t").unwrap();
        let r = Readings::Scalar(ScalarBatch {
            unit: "u".into(),
            ts: vec![seq as i64],
            values: vec![value],
            labels: vec![],
        });
        let params = SealParams {
            device: owner.device_id(),
            stream: stream.clone(),
            seq,
            epoch: 0,
            prev,
            salt: [seq as u8; 16],
            covers,
        };
        let s = seal(&r, &params, &owner.epoch_key(&stream, 0), signed.then_some(owner), &mut Vec::new()).unwrap();
        (s.bytes, s.hash)
    }

    fn values(events: &[Event]) -> Vec<f64> {
        events
            .iter()
            .flat_map(|e| match e {
                Event::Readings { readings: Readings::Scalar(s), .. } => s.values.clone(),
                _ => vec![],
            })
            .collect()
    }

    #[tokio::test]
    async fn unsigned_batches_wait_for_their_signature_and_a_forged_one_never_shows() {
        let owner = crate::datadir::random_identity().unwrap();
        let (mut inbox, dir) = granted_inbox("held", &owner).await;
        let stream = StreamName::new("t").unwrap();
        let msg = |topic: String, payload: Vec<u8>| Message { topic, payload, retain: false, ack: None };
        let on = inbox.topics.batch(owner.device_id(), &stream);

        // Two unsigned batches show nothing until the signed one that covers them arrives.
        let (b0, h0) = batch(&owner, 0, BatchHash::default(), 1.0, false);
        let (b1, h1) = batch(&owner, 1, h0, 2.0, false);
        let (b2, h2) = batch(&owner, 2, h1, 3.0, true);
        assert!(inbox.handle(&msg(on.clone(), b0)).await.is_empty());
        assert!(inbox.handle(&msg(on.clone(), b1)).await.is_empty());
        assert_eq!(values(&inbox.handle(&msg(on.clone(), b2)).await), [1.0, 2.0, 3.0]);

        // Another holder of the epoch key slips in an unsigned batch 3 ahead of the device's own:
        // held beside it, never shown, and dropped when the device's signature picks its own.
        let (forged, _) = batch(&owner, 3, h2, 99.0, false);
        assert!(inbox.handle(&msg(on.clone(), forged)).await.is_empty());
        let (b3, h3) = batch(&owner, 3, h2, 4.0, false);
        let (b4, _) = batch(&owner, 4, h3, 5.0, true);
        assert!(inbox.handle(&msg(on.clone(), b3)).await.is_empty());
        let real4 = inbox.handle(&msg(on.clone(), b4)).await;
        assert_eq!(values(&real4), [4.0, 5.0], "{real4:?}");
        assert!(format!("{real4:?}").contains("not on the chain"), "{real4:?}");
        assert_eq!(inbox.held_bytes(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn live_frames_show_at_once_only_moving_forward_and_their_batch_adds_only_the_rest() {
        let owner = crate::datadir::random_identity().unwrap();
        let (mut inbox, dir) = granted_inbox("live", &owner).await;
        let topics = inbox.topics.clone();
        let stream = StreamName::new("t").unwrap();
        let msg = |topic: String, payload: Vec<u8>| Message { topic, payload, retain: false, ack: None };
        let live = topics.live(owner.device_id(), &stream);
        let frame = |signer: &Identity, pos: u64, value: f64| {
            let r = Readings::Scalar(ScalarBatch {
                unit: "u".into(),
                ts: vec![pos as i64],
                values: vec![value],
                labels: vec![],
            });
            let at = frame::FrameParams { stream: stream.clone(), pos, epoch: 0, salt: [pos as u8; 16] };
            frame::seal_frame(&r, &at, &owner.epoch_key(&stream, 0), signer, &mut Vec::new()).unwrap()
        };
        let live_values = |events: &[Event]| -> Vec<f64> {
            events
                .iter()
                .flat_map(|e| match e {
                    Event::Live { readings: Readings::Scalar(s), .. } => s.values.clone(),
                    _ => vec![],
                })
                .collect()
        };

        // Shown on arrival: a signed frame needs no later batch.
        assert_eq!(live_values(&inbox.handle(&msg(live.clone(), frame(&owner, 0, 1.0))).await), [1.0]);
        assert_eq!(live_values(&inbox.handle(&msg(live.clone(), frame(&owner, 1, 2.0))).await), [2.0]);
        // A replay, and a frame signed by another holder of the stream key, show nothing.
        let replayed = inbox.handle(&msg(live.clone(), frame(&owner, 0, 1.0))).await;
        assert!(format!("{replayed:?}").contains("replayed or out of order"), "{replayed:?}");
        let intruder = crate::datadir::random_identity().unwrap();
        let mut forged = frame(&intruder, 2, 99.0);
        forged[4..20].copy_from_slice(&owner.device_id().0);
        let forged = inbox.handle(&msg(live.clone(), forged)).await;
        assert!(format!("{forged:?}").contains("not signed by pi"), "{forged:?}");
        // On a batch's topic, a frame is no batch.
        let on_batch = inbox.handle(&msg(topics.batch(owner.device_id(), &stream), frame(&owner, 5, 5.0))).await;
        assert!(matches!(on_batch[..], [Event::Refused { .. }]), "{on_batch:?}");

        // The stored batch of readings 0..=2 (2 never came live) shows only reading 2.
        let r = Readings::Scalar(ScalarBatch {
            unit: "u".into(),
            ts: vec![0, 1, 2],
            values: vec![1.0, 2.0, 3.0],
            labels: vec![],
        });
        let params = SealParams {
            device: owner.device_id(),
            stream: stream.clone(),
            seq: 0,
            epoch: 0,
            prev: BatchHash::default(),
            salt: [9; 16],
            covers: Vec::new(),
        };
        let b = seal(&r, &params, &owner.epoch_key(&stream, 0), Some(&owner), &mut Vec::new()).unwrap();
        assert_eq!(values(&inbox.handle(&msg(topics.batch(owner.device_id(), &stream), b.bytes)).await), [3.0]);
        // A frame no newer than what the batches brought is late or replayed: not shown.
        let late = inbox.handle(&msg(live.clone(), frame(&owner, 2, 3.0))).await;
        assert!(late.is_empty(), "{late:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An inbox of `me` that knows `owner` as the peer "pi" and holds its grant of `t`.
    async fn granted_inbox(tag: &str, owner: &Identity) -> (Inbox, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("edgeseal-inbox-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let me = crate::datadir::random_identity().unwrap();
        let local = LocalState::open(&dir.join("state.db")).await.unwrap();
        let peer = PeerRow { device: owner.device_id(), name: "pi".into(), public: owner.public(), paired_ms: 0 };
        local.add_peer(&peer).await.unwrap();
        let topics = Topics::new("edgeseal/v1");
        let mut inbox = Inbox::new(Arc::new(me), local, topics.clone()).await.unwrap();
        inbox.store = true;
        let stream = StreamName::new("t").unwrap();
        let me_pub = inbox.identity.public();
        let terms = grant::Terms { issued_ms: 1, from_ms: 0, to_ms: i64::MAX };
        let keys = [(0, TreeNode::root(&owner.epoch_key(&stream, 0)))];
        let g = grant::issue(owner, &me_pub, &stream, terms, &keys, &mut rng()).unwrap();
        let m = Message {
            topic: topics.grant(owner.device_id(), &stream, me_pub.device_id()),
            payload: g,
            retain: false,
            ack: None,
        };
        inbox.handle(&m).await;
        (inbox, dir)
    }

    #[tokio::test]
    async fn an_injected_unsigned_batch_advances_nothing_and_the_real_ones_still_arrive_and_store() {
        let owner = crate::datadir::random_identity().unwrap();
        let (mut inbox, dir) = granted_inbox("inject", &owner).await;
        let stream = StreamName::new("t").unwrap();
        let on = inbox.topics.batch(owner.device_id(), &stream);
        let msg = |payload: Vec<u8>| Message { topic: on.clone(), payload, retain: false, ack: None };
        let (b0, h0) = batch(&owner, 0, BatchHash::default(), 1.0, true);
        assert_eq!(values(&inbox.handle(&msg(b0)).await), [1.0]);
        // The broker (no key) injects unsigned batches: the next number, and a huge one.
        for seq in [1, u64::MAX - 1] {
            let mut junk = batch(&owner, seq, h0, 0.0, false).0;
            let n = junk.len();
            junk[n - 20] ^= 1; // it cannot even encrypt: altered ciphertext
            assert!(inbox.handle(&msg(junk)).await.is_empty());
        }
        let head = inbox.local.remembered(owner.device_id(), &stream).await.unwrap().unwrap();
        assert_eq!(head.seq, 0, "an unsigned batch moved the stream's state");
        // The device's own batches arrive, are shown and are queued for the store.
        let (b1, h1) = batch(&owner, 1, h0, 2.0, false);
        let (b2, _) = batch(&owner, 2, h1, 3.0, true);
        assert!(inbox.handle(&msg(b1)).await.is_empty());
        assert_eq!(values(&inbox.handle(&msg(b2)).await), [2.0, 3.0]);
        let head = inbox.local.remembered(owner.device_id(), &stream).await.unwrap().unwrap();
        assert_eq!(head.seq, 2);
        let queued = inbox.local.outbox(owner.device_id(), 10).await.unwrap();
        assert_eq!(queued.iter().map(|(_, r)| r.seq).collect::<Vec<_>>(), [0, 1, 2]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_flood_of_chained_unsigned_junk_stays_within_the_tentative_bound() {
        let owner = crate::datadir::random_identity().unwrap();
        let (mut inbox, dir) = granted_inbox("flood", &owner).await;
        inbox.limits = TentativeLimits { stream: 64 << 10, total: 96 << 10 };
        let stream = StreamName::new("t").unwrap();
        let on = inbox.topics.batch(owner.device_id(), &stream);
        let msg = |payload: Vec<u8>| Message { topic: on.clone(), payload, retain: false, ack: None };
        let (b0, h0) = batch(&owner, 0, BatchHash::default(), 1.0, true);
        inbox.handle(&msg(b0)).await;
        // A co-grantee (it holds the key) chains 2,000 unsigned batches onto the real head.
        let mut prev = h0;
        let mut refused = 0;
        for seq in 1..=2000 {
            let (junk, h) = batch(&owner, seq, prev, 99.0, false);
            prev = h;
            refused += inbox.handle(&msg(junk)).await.len();
            assert!(inbox.held_bytes() <= 64 << 10, "{} bytes held", inbox.held_bytes());
        }
        assert!(refused > 0, "the full buffer was never reported");
        // The device's next signed batch still arrives, and the junk before it goes.
        let (b1, _) = batch(&owner, 1, h0, 2.0, true);
        let events = inbox.handle(&msg(b1)).await;
        assert_eq!(values(&events), [2.0], "{events:?}");
        assert!(inbox.held_bytes() < 64 << 10);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_hole_is_asked_for_and_filled_from_the_top_down_with_the_batches_the_chain_names() {
        let owner = crate::datadir::random_identity().unwrap();
        let (mut inbox, dir) = granted_inbox("repair", &owner).await;
        let stream = StreamName::new("t").unwrap();
        let me = inbox.identity.device_id();
        let (on, back) =
            (inbox.topics.batch(owner.device_id(), &stream), inbox.topics.repair(owner.device_id(), &stream, me));
        let msg =
            |topic: &String, payload: Vec<u8>| Message { topic: topic.clone(), payload, retain: false, ack: None };
        let mut prev = BatchHash::default();
        let mut real = Vec::new();
        for seq in 0..6 {
            let (b, h) = batch(&owner, seq, prev, seq as f64, seq == 0 || seq == 5);
            real.push(b);
            prev = h;
        }
        inbox.handle(&msg(&on, real[0].clone())).await;
        let events = inbox.handle(&msg(&on, real[5].clone())).await;
        assert!(
            events.iter().any(|e| matches!(e, Event::Missing { from: 1, to: 4, .. })),
            "the hole was not asked for: {events:?}"
        );
        // Another holder of the key answers first with its own batch 4: refused by the chain.
        let (forged, _) = batch(&owner, 4, BatchHash::default(), 99.0, false);
        let said = inbox.handle(&msg(&back, forged)).await;
        assert!(format!("{said:?}").contains("not the one the chain names"), "{said:?}");
        // The device's answer, newest first, in two parts.
        for seq in [4, 3] {
            inbox.handle(&msg(&back, real[seq].clone())).await;
        }
        assert_eq!(inbox.due_requests().len(), 0, "asked again too soon");
        assert_eq!(inbox.gaps.values().flatten().map(|h| (h.from, h.to)).collect::<Vec<_>>(), [(1, 2)]);
        // The agent restarts: what is still missing is asked for at once.
        let mut inbox = Inbox::new(inbox.identity.clone(), inbox.local.clone(), inbox.topics.clone()).await.unwrap();
        inbox.store = true;
        let due: Vec<(u64, u64)> = inbox.due_requests().into_iter().map(|(_, _, f, t)| (f, t)).collect();
        assert_eq!(due, [(1, 2)]);
        for seq in [2, 1] {
            inbox.handle(&msg(&back, real[seq].clone())).await;
        }
        assert!(inbox.gaps.values().all(Vec::is_empty), "the hole stayed open");
        assert!(inbox.local.holes().await.unwrap().is_empty(), "the filled hole is still recorded");
        let mut stored: Vec<u64> =
            inbox.local.outbox(owner.device_id(), 10).await.unwrap().into_iter().map(|(_, r)| r.seq).collect();
        stored.sort_unstable();
        assert_eq!(stored, [0, 1, 2, 3, 4, 5]);
        let _ = std::fs::remove_dir_all(&dir);
    }
    /// A round whose signed batch covers its unsigned ones by hash: one of
    /// them lost on the way, or altered by the broker, costs only itself;
    /// the batches before and after it are shown at once, and only the
    /// lost one is asked for.
    #[tokio::test]
    async fn a_batch_lost_or_altered_live_costs_only_itself() {
        for altered in [false, true] {
            let owner = crate::datadir::random_identity().unwrap();
            let (mut inbox, dir) = granted_inbox(if altered { "local-alt" } else { "local-lost" }, &owner).await;
            let stream = StreamName::new("t").unwrap();
            let on = inbox.topics.batch(owner.device_id(), &stream);
            let msg = |payload: Vec<u8>| Message { topic: on.clone(), payload, retain: false, ack: None };
            let (mut prev, mut real, mut hashes) = (BatchHash::default(), Vec::new(), Vec::new());
            for seq in 0..6u64 {
                let (signed, covers) = (seq == 0 || seq == 5, if seq == 5 { hashes[1..].to_vec() } else { Vec::new() });
                let (b, h) = covering(&owner, seq, prev, seq as f64, signed, covers);
                real.push(b);
                hashes.push(h);
                prev = h;
            }
            let mut shown = values(&inbox.handle(&msg(real[0].clone())).await);
            for seq in 1..5 {
                if seq == 3 {
                    if altered {
                        let (junk, _) = batch(&owner, 3, hashes[2], 99.0, false);
                        inbox.handle(&msg(junk)).await;
                    }
                    continue;
                }
                shown.extend(values(&inbox.handle(&msg(real[seq].clone())).await));
            }
            let events = inbox.handle(&msg(real[5].clone())).await;
            shown.extend(values(&events));
            assert_eq!(shown, [0.0, 1.0, 2.0, 4.0, 5.0], "altered: {altered}: {events:?}");
            assert!(events.iter().any(|e| matches!(e, Event::Missing { from: 3, to: 3, .. })), "{events:?}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    /// Batches under an epoch not granted are kept sealed and said once, not
    /// once per batch; they open when a grant of that epoch arrives.
    #[tokio::test]
    async fn batches_without_a_key_are_said_once_and_open_when_the_grant_comes() {
        let owner = crate::datadir::random_identity().unwrap();
        let (mut inbox, dir) = granted_inbox("locked", &owner).await;
        let stream = StreamName::new("t").unwrap();
        let on = inbox.topics.batch(owner.device_id(), &stream);
        let msg =
            |topic: &String, payload: Vec<u8>| Message { topic: topic.clone(), payload, retain: false, ack: None };
        let mut prev = BatchHash::default();
        let mut locked = 0;
        for seq in 0..3u64 {
            let r = Readings::Scalar(ScalarBatch {
                unit: "u".into(),
                ts: vec![seq as i64],
                values: vec![seq as f64],
                labels: vec![],
            });
            let p = SealParams {
                device: owner.device_id(),
                stream: stream.clone(),
                seq,
                epoch: 1,
                prev,
                salt: [1; 16],
                covers: Vec::new(),
            };
            let b = seal(&r, &p, &owner.epoch_key(&stream, 1), Some(&owner), &mut Vec::new()).unwrap();
            prev = b.hash;
            let events = inbox.handle(&msg(&on, b.bytes)).await;
            locked += events.iter().filter(|e| matches!(e, Event::Locked { .. })).count();
        }
        assert_eq!(locked, 1, "said once per spell without a key");
        let me_pub = inbox.identity.public();
        let terms = grant::Terms { issued_ms: 2, from_ms: 0, to_ms: i64::MAX };
        let keys = [(1, TreeNode::root(&owner.epoch_key(&stream, 1)))];
        let g = grant::issue(&owner, &me_pub, &stream, terms, &keys, &mut rng()).unwrap();
        let events = inbox.handle(&msg(&inbox.topics.grant(owner.device_id(), &stream, me_pub.device_id()), g)).await;
        assert_eq!(values(&events), [0.0, 1.0, 2.0], "{events:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The index of a peer's grants (on an exact topic, for brokers that keep retained messages
    /// from wildcard subscriptions): each entry is taken as a grant on its own topic would be; a
    /// bad one is refused and the rest go on.
    #[tokio::test]
    async fn a_grant_index_grants_what_each_of_its_signed_entries_grants() {
        use base64::Engine as _;
        let owner = crate::datadir::random_identity().unwrap();
        let (mut inbox, dir) = granted_inbox("index", &owner).await;
        let me = inbox.identity.public();
        // A grant of `name`, signed by `signer`, as the index carries it.
        let issue = |signer: &Identity, name: &str| {
            let stream = StreamName::new(name).unwrap();
            let terms = grant::Terms { issued_ms: 5, from_ms: 0, to_ms: i64::MAX };
            let keys = [(0, TreeNode::root(&signer.epoch_key(&stream, 0)))];
            base64::engine::general_purpose::STANDARD
                .encode(grant::issue(signer, &me, &stream, terms, &keys, &mut rng()).unwrap())
        };
        // A grant signed by someone else, in the owner's index, is refused like one on its own topic.
        let stranger = crate::datadir::random_identity().unwrap();
        let (room, forged, humidity) =
            (issue(&owner, "room.temperature"), issue(&stranger, "forged"), issue(&owner, "humidity"));
        let index = serde_json::json!({"grants": [room, "not base64!", forged, humidity]});
        let topic = inbox.topics.grants(owner.device_id(), me.device_id());
        let m = Message { topic, payload: serde_json::to_vec(&index).unwrap(), retain: true, ack: None };
        let events = inbox.handle(&m).await;
        let granted: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::Granted { stream, .. } => Some(stream.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(granted, ["room.temperature", "humidity"], "{events:?}");
        assert_eq!(events.iter().filter(|e| matches!(e, Event::Refused { .. })).count(), 2, "{events:?}");
        // The same index again (a retained message after a reconnect) grants nothing new.
        assert!(inbox.handle(&m).await.iter().all(|e| !matches!(e, Event::Granted { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
