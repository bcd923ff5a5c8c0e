//! Sharing while the agent runs: the [`Publisher`] sends sealed batches from
//! the durable publish queue to the broker, in order, each removed only once
//! acknowledged (and publishes pending grants, retained); the [`Receiver`]
//! verifies, opens and queues for the store what peers publish.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeseal_core::keys::Identity;
use edgeseal_mqtt::link::{Link, Message};
use edgeseal_store::local::LocalState;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::{FINAL_DRAIN, Stats};
use crate::Result;
use crate::config::Config;
use crate::share::{Arrival, Event, Grants, Inbox, Topics, log_event};

/// Batches published (in flight together) per round.
const PUBLISH_CHUNK: u32 = 256;
/// How often an idle publisher looks for grants to publish (`share` and `revoke` store them).
const GRANT_POLL: Duration = Duration::from_secs(1);

/// Connects the agent's persistent MQTT session and makes the two sharing
/// components over it. The link lives until the publisher's last attempt.
pub async fn connect(
    cfg: &Config,
    identity: Arc<Identity>,
    local: LocalState,
    drainer: Arc<Notify>,
    sealed: Arc<Notify>,
    stats: Arc<Stats>,
) -> Result<(Publisher, Receiver)> {
    let device = identity.device_id();
    let mut opts = cfg.mqtt.link_options(&format!("edgeseal-{device}"))?;
    opts.persistent_session = true;
    let link_stop = CancellationToken::new();
    let (link, rx) = Link::start(opts, link_stop.clone())?;
    let topics = Topics::new(&cfg.mqtt.prefix);
    let mut inbox = Inbox::new(identity.clone(), local.clone(), topics.clone()).await?;
    inbox.store = true;
    inbox.subscribe(&link).await?;
    let publisher = Publisher { sealed, local, link: link.clone(), topics, identity, stats: stats.clone(), link_stop };
    let receiver = Receiver { inbox, link, rx, drainer, stats };
    Ok((publisher, receiver))
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
    /// Ends the link once the last attempt is over.
    link_stop: CancellationToken,
}

impl Publisher {
    /// Publishes until `shutdown`, then for up to [`FINAL_DRAIN`] what is queued.
    pub async fn run(self, shutdown: CancellationToken) {
        self.publish_until(&shutdown).await;
        self.link_stop.cancel();
    }

    async fn publish_until(&self, stop: &CancellationToken) {
        let device = self.identity.device_id();
        let mut backoff = Duration::from_millis(250);
        let mut final_deadline: Option<Instant> = None;
        let mut connected = self.link.connected();
        let mut last_grants: Option<Instant> = None;
        loop {
            if stop.is_cancelled() && final_deadline.is_none() {
                final_deadline = Some(Instant::now() + FINAL_DRAIN);
            }
            if final_deadline.is_some_and(|d| Instant::now() > d) {
                return;
            }
            if !*connected.borrow_and_update() {
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
            // Grants change rarely (`share`, `revoke`): look for new ones now and then, not every round.
            if last_grants.is_none_or(|t| t.elapsed() >= GRANT_POLL) {
                let grants = Grants { identity: &self.identity, local: &self.local };
                if let Err(e) = grants.publish(&self.link, &self.topics).await {
                    debug!("grants wait: {e}");
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
            let mut pending = Vec::with_capacity(queue.len());
            for (_, stream, sealed) in &queue {
                match self.link.send(&self.topics.batch(device, stream), sealed.clone(), false).await {
                    Ok(p) => pending.push(p),
                    Err(e) => {
                        debug!("publishing waits: {e}");
                        break;
                    }
                }
            }
            let results = futures_util::future::join_all(pending.into_iter().map(|p| p.acked())).await;
            // Only the acknowledged prefix leaves the queue, so a peer never sees a later batch twice
            // before an earlier one.
            let done: Vec<i64> =
                queue.iter().zip(&results).take_while(|(_, r)| r.is_ok()).map(|((id, ..), _)| *id).collect();
            if let Some(&through) = done.last()
                && let Err(e) = self.local.published(through).await
            {
                error!("cannot update the publish queue: {e}");
            }
            self.stats.published.fetch_add(done.len() as u64, Ordering::Relaxed);
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

/// Verifies, opens and queues for the store what peers publish; picks up
/// peers paired while it runs; tells the LCD whether the broker is reachable.
pub struct Receiver {
    inbox: Inbox,
    link: Link,
    rx: mpsc::Receiver<Message>,
    /// Woken for each received batch queued for the store.
    drainer: Arc<Notify>,
    stats: Arc<Stats>,
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
        loop {
            self.stats.broker_down.store(!*connected.borrow_and_update(), Ordering::Relaxed);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = connected.changed() => if r.is_err() { return },
                _ = refresh.tick() => {
                    if let Err(e) = self.inbox.refresh_peers(&self.link).await {
                        warn!("cannot reload peers: {e}");
                    }
                }
                m = self.rx.recv() => {
                    let Some(m) = m else { return };
                    self.handle(&m).await;
                }
            }
        }
    }

    async fn handle(&mut self, m: &Message) {
        for ev in self.inbox.handle(m).await {
            if let Event::Readings { peer, device, stream, readings, arrival, .. } = &ev {
                let status = match arrival {
                    Arrival::Gap { missing } => format!("verified; {missing} batch(es) before it missing"),
                    _ => "verified".to_string(),
                };
                self.stats.live.received(peer, *device, stream, readings, &status);
            }
            if matches!(ev, Event::Readings { .. } | Event::Locked { .. }) {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                self.drainer.notify_one();
            }
            log_event(&ev);
        }
    }
}
