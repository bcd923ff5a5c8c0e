//! Sharing while the agent runs: the [`Publisher`] sends sealed batches from
//! the durable publish queue to the broker, in order, each removed only once
//! acknowledged (and publishes pending grants, retained); the
//! [`FrameSender`] seals and publishes a signed live frame for every journal
//! commit of a granted stream; the [`Receiver`] verifies, opens and queues for
//! the store what peers publish, and shows their live frames.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeseal_core::frame::{FrameParams, seal_frame};
use edgeseal_core::keys::Identity;
use edgeseal_core::reading::into_batches;
use edgeseal_core::{DeviceId, StreamName};
use edgeseal_mqtt::link::{Link, Message};
use edgeseal_store::Store as _;
use edgeseal_store::local::LocalState;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::frames::{Accepted, FrameFeed};
use super::sealer::Wakers;
use super::{FINAL_DRAIN, Stats};
use crate::Result;
use crate::config::Config;
use crate::service::StoreCell;
use crate::share::{Arrival, Event, Grants, Inbox, REPAIR_MAX, Topic, Topics, log_event};

/// Batches published (in flight together) per round.
const PUBLISH_CHUNK: u32 = 256;
/// How often an idle publisher looks for grants to publish (`share` and `revoke` store them).
const GRANT_POLL: Duration = Duration::from_secs(1);

/// The sharing components over one MQTT session; `up` spawns each.
#[derive(Debug)]
pub struct Sharing {
    pub publisher: Publisher,
    pub frames: FrameSender,
    pub receiver: Receiver,
    /// With `store = "broker"`: what an ingest says it stored leaves the outbox.
    pub handover: Option<super::handover::Handover>,
}

/// Connects the agent's persistent MQTT session and makes the sharing
/// components over it. The link lives until the publisher's last attempt.
pub async fn connect(
    cfg: &Config,
    identity: Arc<Identity>,
    local: LocalState,
    wake: &Wakers,
    feed: FrameFeed,
    store: Arc<StoreCell>,
    stats: Arc<Stats>,
) -> Result<Sharing> {
    let device = identity.device_id();
    let mut opts = cfg.mqtt.link_options(&format!("edgeseal-{device}"))?;
    opts.persistent_session = true;
    let link_stop = CancellationToken::new();
    let (link, rx) = Link::start(opts, link_stop.clone())?;
    // The link ends when the last component sending on it (the publisher, the handover) is done.
    let link_stop = Arc::new(link_stop.drop_guard());
    let topics = Topics::new(&cfg.mqtt.prefix);
    let mut inbox = Inbox::new(identity.clone(), local.clone(), topics.clone()).await?;
    inbox.limits = cfg.mqtt.tentative;
    // A device that keeps no store leaves peers' batches to ingest, which takes every device's.
    inbox.store = !cfg.stores_through_broker();
    inbox.subscribe(&link).await?;
    let mut frames = FrameSender {
        feed,
        local: local.clone(),
        link: link.clone(),
        topics: topics.clone(),
        identity: identity.clone(),
        stats: stats.clone(),
        scratch: Vec::new(),
        cuts: HashMap::new(),
    };
    // Readings accepted from now on go out live for the streams granted now.
    frames.granted().await;
    let publisher = Publisher {
        sealed: wake.publisher.clone(),
        local: local.clone(),
        link: link.clone(),
        topics: topics.clone(),
        identity: identity.clone(),
        stats: stats.clone(),
        _link_stop: link_stop.clone(),
    };
    link.subscribe(&topics.requests_to(device)).await?;
    let (handover, stored) = match cfg.stores_through_broker() {
        true => {
            let (tx, rx) = mpsc::channel(64);
            link.subscribe(&topics.stored(device)).await?;
            let h = super::handover::Handover {
                local: local.clone(),
                identity,
                link: link.clone(),
                topics: topics.clone(),
                stats: stats.clone(),
                acks: rx,
                checkpoint_every: cfg.checkpoint_every,
                resend_after: cfg.resend_after,
                publisher: wake.publisher.clone(),
                _link_stop: link_stop,
            };
            (Some(h), Some(tx))
        }
        false => (None, None),
    };
    let repairs = Repairs { me: device, local, store, link: link.clone(), topics, busy: Default::default() };
    let receiver = Receiver { inbox, link, rx, drainer: wake.drainer.clone(), stats, repairs, stored };
    Ok(Sharing { publisher, frames, receiver, handover })
}

/// Publishes sealed batches from the durable publish queue, in order, each
/// removed only once the broker acknowledged it; and pending grants (retained).
#[derive(Debug)]
pub struct Publisher {
    /// Woken by the sealer for each sealed batch.
    sealed: Arc<Notify>,
    local: LocalState,
    link: Link,
    topics: Topics,
    identity: Arc<Identity>,
    stats: Arc<Stats>,
    /// Ends the link once the last attempt is over (and the handover's, if any).
    _link_stop: Arc<tokio_util::sync::DropGuard>,
}

impl Publisher {
    /// Publishes until `shutdown`, then for up to [`FINAL_DRAIN`] what is queued.
    pub async fn run(self, shutdown: CancellationToken) {
        self.publish_until(&shutdown).await;
    }

    async fn publish_until(&self, stop: &CancellationToken) {
        let device = self.identity.device_id();
        let mut backoff = Duration::from_millis(250);
        let mut final_deadline: Option<Instant> = None;
        let mut connected = self.link.connected();
        let mut last_grants: Option<Instant> = None;
        let mut grants_since_connect = false;
        loop {
            if stop.is_cancelled() && final_deadline.is_none() {
                final_deadline = Some(Instant::now() + FINAL_DRAIN);
            }
            if final_deadline.is_some_and(|d| Instant::now() > d) {
                return;
            }
            if !*connected.borrow_and_update() {
                grants_since_connect = false;
                last_grants = None;
                // Nothing queued: no need to wait for the broker at shutdown.
                if final_deadline.is_some() && self.local.publish_queue(1).await.is_ok_and(|q| q.is_empty()) {
                    return;
                }
                tokio::select! {
                    _ = connected.changed() => {}
                    _ = stop.cancelled(), if final_deadline.is_none() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)), if final_deadline.is_some() => {}
                }
                continue;
            }
            // Grants change rarely (`share`, `revoke`): look for new ones now and then, not every
            // round; after each (re)connection publish them all again, in case the broker lost them.
            if last_grants.is_none_or(|t| t.elapsed() >= GRANT_POLL) {
                let grants = Grants { identity: &self.identity, local: &self.local };
                match grants.publish(&self.link, &self.topics, !grants_since_connect).await {
                    Ok(_) => grants_since_connect = true,
                    Err(e) => debug!("grants wait: {e}"),
                }
                last_grants = Some(Instant::now());
            }
            let queue = match self.local.publish_queue(PUBLISH_CHUNK).await {
                Ok(q) => q,
                Err(e) => {
                    error!("cannot read the publish queue: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if queue.is_empty() {
                if final_deadline.is_some() {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = self.sealed.notified() => {}
                    _ = tokio::time::sleep(GRANT_POLL) => {}
                }
                continue;
            }
            // Queued one after another, so they reach the broker in order; acknowledged together.
            // A batch too large for an MQTT packet can never go: it is stored, named and passed over.
            let mut pending = Vec::with_capacity(queue.len());
            for (_, stream, sealed) in &queue {
                let topic = self.topics.batch(device, stream);
                if !edgeseal_mqtt::link::fits(&topic, sealed.len()) {
                    self.stats.unpublishable.fetch_add(1, Ordering::Relaxed);
                    error!(
                        "a batch of {stream} is {} MB, more than the {} MiB an MQTT packet carries here: it is stored, but peers do not receive it",
                        sealed.len() / 1_000_000,
                        edgeseal_mqtt::link::MAX_PACKET >> 20
                    );
                    pending.push(None);
                    continue;
                }
                match self.link.send(&topic, sealed.clone(), false).await {
                    Ok(p) => pending.push(Some(p)),
                    Err(e) => {
                        debug!("publishing waits: {e}");
                        break;
                    }
                }
            }
            // Each entry's outcome: Ok(true) published, Ok(false) passed over (too large).
            let results = futures_util::future::join_all(pending.into_iter().map(|p| async move {
                match p {
                    Some(p) => p.acked().await.map(|()| true),
                    None => Ok(false),
                }
            }))
            .await;
            // Only the acknowledged prefix leaves the queue, so a peer never sees a later batch twice
            // before an earlier one.
            let done: Vec<(i64, bool)> = queue
                .iter()
                .zip(&results)
                .map_while(|((id, ..), r)| r.as_ref().ok().map(|&sent| (*id, sent)))
                .collect();
            if let Some(&(through, _)) = done.last()
                && let Err(e) = self.local.published(through, crate::now_ms()).await
            {
                error!("cannot update the publish queue: {e}");
            }
            let published = done.iter().filter(|(_, sent)| *sent).count();
            self.stats.published.fetch_add(published as u64, Ordering::Relaxed);
            if done.len() < queue.len() {
                if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                    debug!("publishing waits: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            } else {
                backoff = Duration::from_millis(250);
            }
        }
    }
}

/// How often the frame sender looks up which streams are granted (`share` and `revoke` change that).
const LIVE_POLL: Duration = Duration::from_secs(1);

/// Seals each journal commit of a granted stream into a signed live frame
/// (under the stream's current key epoch, read when it is sealed, so a
/// revoked peer gets nothing after its revocation) and publishes it at QoS 0:
/// at once, never queued by the broker, and dropped (counted) while the
/// broker is down, since the stored batches carry the same readings.
pub struct FrameSender {
    feed: FrameFeed,
    local: LocalState,
    link: Link,
    topics: Topics,
    identity: Arc<Identity>,
    stats: Arc<Stats>,
    scratch: Vec<u8>,
    /// Per stream, the times its grants begin and end after (ascending): no
    /// frame holds readings from both sides of one, so a peer granted a time
    /// range opens exactly the frames of readings in it.
    cuts: HashMap<StreamName, Vec<i64>>,
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender").field("link", &self.link).finish_non_exhaustive()
    }
}

impl FrameSender {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut poll = tokio::time::interval(LIVE_POLL);
        let connected = self.link.connected();
        let mut buf = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = poll.tick() => self.granted().await,
                n = self.feed.rx.recv_many(&mut buf, 256) => {
                    if n == 0 {
                        return;
                    }
                    let up = *connected.borrow();
                    for a in buf.drain(..) {
                        if !up {
                            self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if let Err(e) = self.send(&a).await {
                            self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                            debug!("no live frame for {} readings of {}: {e}", a.readings.len(), a.stream);
                        }
                    }
                }
            }
        }
    }

    /// Which streams are granted to a peer now, and from and to when.
    async fn granted(&mut self) {
        match self.local.grants_out().await {
            Ok(g) => {
                self.cuts = crate::share::cut_times(&g);
                self.feed.streams.replace(g.into_iter().filter(|g| !g.revoked).map(|g| g.stream).collect());
            }
            Err(e) => warn!("cannot read the grants for live frames: {e}"),
        }
    }

    async fn send(&mut self, a: &Accepted) -> Result<()> {
        let epoch = self.local.stream_state(&a.stream).await.map_err(crate::Error::Local)?.epoch;
        let key = self.identity.epoch_key(&a.stream, epoch);
        let topic = self.topics.live(self.identity.device_id(), &a.stream);
        // Runs of readings between the same two grant times, each its own frames.
        let times = self.cuts.get(&a.stream).map_or(&[][..], Vec::as_slice);
        for run in super::frames::runs_between(&a.readings, times) {
            self.send_run(a, run, epoch, &key, &topic).await?;
        }
        Ok(())
    }

    async fn send_run(
        &mut self,
        a: &Accepted,
        run: std::ops::Range<usize>,
        epoch: u32,
        key: &edgeseal_core::keys::EpochKey,
        topic: &str,
    ) -> Result<()> {
        let first_pos = a.first_pos + run.start as u64;
        let mut pos = first_pos;
        for (readings, last) in into_batches(&a.readings[run]) {
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| crate::Error::Internal(format!("no system randomness: {e}")))?;
            // Too large for a frame (a camera's image): it goes with its stored batch only.
            let at = FrameParams { stream: a.stream.clone(), pos, epoch, salt };
            match seal_frame(&readings, &at, key, &self.identity, &mut self.scratch) {
                Ok(bytes) => {
                    self.link.publish_once(topic, bytes).await?;
                    self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => debug!("readings {pos}.. of {} go without a live frame: {e}", a.stream),
            }
            pos = first_pos + last as u64 + 1;
        }
        Ok(())
    }
}

/// Verifies, opens and queues for the store what peers publish; picks up
/// peers paired while it runs; tells the LCD whether the broker is reachable.
pub struct Receiver {
    inbox: Inbox,
    link: Link,
    rx: mpsc::Receiver<Message>,
    /// Woken for each received batch queued for the store.
    drainer: Arc<Notify>,
    stats: Arc<Stats>,
    /// What answers peers' requests for batches they missed.
    repairs: Repairs,
    /// Where what ingest stored of this device's batches goes (`store = "broker"`).
    stored: Option<mpsc::Sender<Vec<u8>>>,
}

/// Answers a peer's request for batches it missed, from the store, with the
/// same sealed bytes: only streams granted to that peer, at most
/// [`REPAIR_MAX`] batches a request, one answer per peer and stream at a time.
#[derive(Clone)]
struct Repairs {
    me: DeviceId,
    local: LocalState,
    store: Arc<StoreCell>,
    link: Link,
    topics: Topics,
    busy: Arc<std::sync::Mutex<std::collections::HashSet<(DeviceId, StreamName)>>>,
}

impl Repairs {
    async fn answer(&self, stream: StreamName, peer: DeviceId, payload: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Ask {
            from: u64,
            to: u64,
        }
        let Ok(ask) = serde_json::from_slice::<Ask>(payload) else {
            return warn!("a request for batches of {stream} that is not {{\"from\", \"to\"}}: ignored");
        };
        let granted = match self.local.grants_out().await {
            Ok(g) => g.iter().any(|g| g.peer == peer && g.stream == stream && !g.revoked),
            Err(e) => return warn!("cannot read the grants to answer a request: {e}"),
        };
        if !granted {
            return debug!("a request for {stream} from {peer}, which holds no grant of it: ignored");
        }
        if !self.busy.lock().unwrap_or_else(|p| p.into_inner()).insert((peer, stream.clone())) {
            return debug!("already answering {peer} about {stream}");
        }
        let me = self.clone();
        tokio::spawn(async move {
            let to = ask.to.min(ask.from.saturating_add(REPAIR_MAX - 1));
            if let Err(e) = me.send(&stream, peer, ask.from, to).await {
                warn!("cannot answer the request for batches {}..={to} of {stream}: {e}", ask.from);
            }
            me.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&(peer, stream));
        });
    }

    async fn send(&self, stream: &StreamName, peer: DeviceId, from: u64, to: u64) -> Result<()> {
        let store = self.store.get().await.map_err(crate::Error::store)?;
        let rows = store.batches_by_seq(self.me, stream, from, to).await.map_err(crate::Error::store)?;
        let topic = self.topics.repair(self.me, stream, peer);
        let mut pending = Vec::with_capacity(rows.len());
        // Newest first: the peer verifies from the top of its hole down, so whatever part of
        // the answer a broker drops (a full queue drops the last), what arrives is usable.
        for r in rows.into_iter().rev() {
            if edgeseal_mqtt::link::fits(&topic, r.sealed.len()) {
                pending.push(self.link.send(&topic, r.sealed, false).await?);
            }
        }
        let n = pending.len();
        for p in pending {
            p.acked().await?;
        }
        info!("sent batches {from}..={to} of {stream} again ({n} found) to a peer that missed them");
        Ok(())
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("link", &self.link).finish_non_exhaustive()
    }
}

impl Receiver {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut refresh = tokio::time::interval(Duration::from_secs(5));
        let mut connected = self.link.connected();
        let mut was_up = false;
        loop {
            let up = *connected.borrow_and_update();
            let was_down = self.stats.broker_down.swap(!up, Ordering::Relaxed);
            if up && was_down && was_up {
                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            was_up |= up;
            tokio::select! {
                // The handover still takes acknowledgements during its last attempt: the link ends then.
                _ = shutdown.cancelled(), if self.stored.is_none() => return,
                r = connected.changed() => if r.is_err() { return },
                _ = refresh.tick() => {
                    if let Err(e) = self.inbox.refresh_peers(&self.link).await {
                        warn!("cannot reload peers: {e}");
                    }
                    // Holes not filled yet are asked for again (the request or part of its answer may be lost).
                    for (device, stream, from, to) in self.inbox.due_requests() {
                        self.ask(device, &stream, from, to).await;
                    }
                }
                m = self.rx.recv() => {
                    let Some(m) = m else { return };
                    self.handle(&m).await;
                }
            }
        }
    }

    /// Asks `device` for batches `from..=to` of `stream` (QoS 1, not waited for).
    async fn ask(&self, device: DeviceId, stream: &StreamName, from: u64, to: u64) {
        let topic = self.repairs.topics.request(device, stream, self.repairs.me);
        let body = serde_json::json!({ "from": from, "to": to }).to_string().into_bytes();
        if let Err(e) = self.link.send(&topic, body, false).await {
            debug!("cannot ask for batches {from}..={to} of {stream} now: {e}");
        }
    }

    async fn handle(&mut self, m: &Message) {
        match self.repairs.topics.parse(&m.topic) {
            Some(Topic::Request { owner, stream, peer }) => {
                if owner == self.repairs.me && self.inbox.peers().any(|p| p.device == peer) {
                    self.repairs.answer(stream, peer, &m.payload).await;
                }
                return;
            }
            Some(Topic::Stored { device }) if device == self.repairs.me => {
                if let Some(tx) = &self.stored {
                    let _ = tx.send(m.payload.clone()).await;
                }
                return;
            }
            _ => {}
        }
        for ev in self.inbox.handle(m).await {
            if let Event::Missing { device, stream, from, to } = &ev {
                self.ask(*device, stream, *from, *to).await;
            }
            if matches!(ev, Event::Repaired { .. }) {
                self.drainer.notify_one();
            }
            if let Event::Readings { peer, device, stream, readings, arrival, .. } = &ev {
                let status = match arrival {
                    Arrival::Gap { missing } => format!("verified; {missing} batch(es) before it missing"),
                    _ => "verified".to_string(),
                };
                self.stats.live.received(peer, *device, stream, readings, &status);
            }
            if let Event::Live { peer, device, stream, readings, .. } = &ev {
                self.stats.live.received(peer, *device, stream, readings, "live");
            }
            if matches!(ev, Event::Refused { .. }) {
                self.stats.refused_received.fetch_add(1, Ordering::Relaxed);
            }
            if matches!(ev, Event::Readings { .. } | Event::Locked { .. }) {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                self.drainer.notify_one();
            }
            log_event(&ev);
        }
        self.stats.tentative_bytes.store(self.inbox.held_bytes() as u64, Ordering::Relaxed);
    }
}
