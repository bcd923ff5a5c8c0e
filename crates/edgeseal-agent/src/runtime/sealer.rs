//! The sealer: checks and journals accepted readings (state.db), cuts them
//! into batches and seals them into the outbox. The batcher has one owner,
//! this task; the service reaches it through [`SealerCommand`]s.
//!
//! A reading that could never be sealed (a time outside 0000–9999, a label
//! over 256 bytes, a blob over the limit) is refused and counted before it
//! is journaled, so it can never wedge the agent. A stream whose batch fails
//! to seal (state.db trouble) keeps its readings in the journal and in
//! order, is tried again with backoff, and holds up no other stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeseal_core::envelope::{SealParams, seal};
use edgeseal_core::keys::Identity;
use edgeseal_core::reading::into_batches;
use edgeseal_core::{Reading, StreamName};
use edgeseal_sensors::batcher::{Batcher, Cut, Policy};
use edgeseal_store::BatchRow;
use edgeseal_store::local::LocalState;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Stats, sleep_until_opt};
use crate::batching::describe_policy;
use crate::service::SealerCommand;
use crate::views::StoreNowView;
use crate::{Error, Result};

/// Readings are journaled (accepted) at most this long after they were read,
/// in one transaction, so a busy agent commits a few times a second rather than per reading.
pub const JOURNAL_WINDOW: Duration = Duration::from_millis(250);
/// Most readings journaled in one transaction.
pub const JOURNAL_MAX: usize = 1024;
/// The first wait before a stream whose batch failed to seal is tried again; it doubles up to a minute.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Where the sealer's batches go, and who is told.
#[derive(Debug, Clone)]
pub struct Wakers {
    /// The drainer (outbox → store).
    pub drainer: Arc<Notify>,
    /// The publisher (publish queue → broker).
    pub publisher: Arc<Notify>,
}

pub struct Sealer {
    local: LocalState,
    identity: Arc<Identity>,
    batcher: Batcher,
    scratch: Vec<u8>,
    wake: Wakers,
    started: Instant,
    stats: Arc<Stats>,
    input: mpsc::Receiver<Reading>,
    commands: mpsc::Receiver<SealerCommand>,
    /// Streams whose last seal failed: when to try again, and the wait after that.
    failing: HashMap<StreamName, (Instant, Duration)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("open", &self.batcher.open_readings()).finish_non_exhaustive()
    }
}

impl Sealer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        local: LocalState,
        identity: Arc<Identity>,
        policy: Policy,
        per_stream: HashMap<StreamName, Policy>,
        wake: Wakers,
        stats: Arc<Stats>,
        input: mpsc::Receiver<Reading>,
        commands: mpsc::Receiver<SealerCommand>,
    ) -> Sealer {
        Sealer {
            local,
            identity,
            batcher: Batcher::new(policy, per_stream),
            scratch: Vec::new(),
            wake,
            started: Instant::now(),
            stats,
            input,
            commands,
            failing: HashMap::new(),
        }
    }

    fn mono(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Runs until `shutdown`: then what is buffered is accepted, every open
    /// batch is cut and sealed, and the sealer returns. It outlives the end of
    /// its input (`--sensor none`, the end of standard input), so "store now"
    /// and the batch policy keep answering.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.resume().await;
        let mut buf = Vec::with_capacity(JOURNAL_MAX);
        let mut input_open = true;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                n = self.input.recv_many(&mut buf, JOURNAL_MAX), if input_open => {
                    if n == 0 {
                        input_open = false;
                        continue;
                    }
                    // Gather what else arrives shortly, so one commit journals many readings.
                    let window = Instant::now() + JOURNAL_WINDOW;
                    while buf.len() < JOURNAL_MAX {
                        let room = JOURNAL_MAX - buf.len();
                        tokio::select! {
                            n = self.input.recv_many(&mut buf, room) => if n == 0 { input_open = false; break },
                            _ = tokio::time::sleep_until(window) => break,
                        }
                    }
                    self.accept(&mut buf).await;
                }
                _ = sleep_until_opt(deadline) => {
                    let mut cuts = self.batcher.due(self.mono());
                    let now = Instant::now();
                    let retry: Vec<StreamName> =
                        self.failing.iter().filter(|(_, (at, _))| *at <= now).map(|(s, _)| s.clone()).collect();
                    cuts.extend(retry.iter().filter_map(|s| self.batcher.take(s)));
                    self.seal_round(cuts).await;
                }
                Some(cmd) = self.commands.recv() => self.command(cmd).await,
                _ = shutdown.cancelled() => break,
            }
        }
        // What the sources handed over before they stopped is accepted too.
        while let Ok(r) = self.input.try_recv() {
            buf.push(r);
        }
        self.accept(&mut buf).await;
        self.failing.clear();
        let cuts = self.batcher.flush();
        let (_, readings) = self.seal_round(cuts).await;
        let left = self.batcher.open_readings();
        if left > 0 {
            warn!(
                "{left} readings could not be sealed before stopping; they stay journaled and are sealed at the next start"
            );
        }
        debug!("sealer stopped after sealing {readings} readings in its last round");
    }

    /// Readings journaled before the last stop are batched again (those that
    /// could never be sealed are set aside in state.db, not retried forever).
    async fn resume(&mut self) {
        let pending = match self.local.pending().await {
            Ok(p) => p,
            Err(e) => return error!("cannot read the readings journaled before the last stop: {e}"),
        };
        if !pending.is_empty() {
            info!("resuming {} readings accepted before the last stop", pending.len());
        }
        let mut cuts = Vec::new();
        for (id, r) in pending {
            match r.check() {
                Ok(()) => cuts.extend(self.batcher.push(id, r, self.mono())),
                Err(why) => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        "a reading of {} journaled before can never be sealed ({why}); set aside in state.db",
                        r.stream
                    );
                    if let Err(e) = self.local.set_aside(id, &why.to_string()).await {
                        error!("cannot set the reading aside: {e}");
                    }
                }
            }
        }
        self.seal_round(cuts).await;
    }

    fn next_deadline(&self) -> Option<Instant> {
        // A deadline too far to name (an interval of centuries) is no deadline.
        let cut =
            self.batcher.next_deadline().and_then(|d| self.started.checked_add(Duration::from_millis(d.max(0) as u64)));
        let retry = self.failing.values().map(|(at, _)| *at).min();
        cut.into_iter().chain(retry).min()
    }

    /// "Store now" and the batch policy, from the web UI, the API and the CLI.
    async fn command(&mut self, cmd: SealerCommand) {
        match cmd {
            SealerCommand::StoreNow(reply) => {
                self.failing.clear();
                let cuts = self.batcher.flush();
                let (batches, readings) = self.seal_round(cuts).await;
                let _ = reply.send(Ok(StoreNowView { batches, readings }));
            }
            SealerCommand::SetPolicy(p) => {
                info!("batches from now on: {}", describe_policy(p));
                self.batcher.set_default(p);
            }
        }
    }

    /// Accepts what can be sealed: journals it (one transaction) and batches it.
    async fn accept(&mut self, buf: &mut Vec<Reading>) {
        if buf.is_empty() {
            return;
        }
        let mut readings = Vec::with_capacity(buf.len());
        for r in buf.drain(..) {
            match r.check() {
                Ok(()) => readings.push(r),
                Err(why) => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    warn!("refused a reading of {}: {why}", r.stream);
                }
            }
        }
        let ids = match self.local.journal(&readings).await {
            Ok(ids) => ids,
            Err(e) => {
                self.stats.refused.fetch_add(readings.len() as u64, Ordering::Relaxed);
                error!("cannot journal {} readings in state.db, so they were not accepted: {e}", readings.len());
                return;
            }
        };
        self.stats.accepted.fetch_add(ids.len() as u64, Ordering::Relaxed);
        let device = self.identity.device_id();
        for r in &readings {
            self.stats.live.local(device, r);
        }
        let mut cuts = Vec::new();
        for (id, r) in ids.into_iter().zip(readings) {
            cuts.extend(self.batcher.push(id, r, self.mono()));
        }
        self.seal_round(cuts).await;
    }

    /// Seals what one round cut; returns (batches, readings) sealed. Only the
    /// last batch of each stream in the round is signed: it covers the earlier
    /// ones through their chain links (format.md), so a burst of small batches
    /// (the live "every reading" cadence) costs one signature per stream and
    /// round, and every round ends on a signed batch. A stream that fails (or
    /// waits to be tried again) has its readings put back, oldest first.
    async fn seal_round(&mut self, cuts: Vec<Cut>) -> (usize, usize) {
        let last: HashMap<StreamName, usize> = cuts.iter().enumerate().map(|(i, c)| (c.stream.clone(), i)).collect();
        let now = Instant::now();
        let mut parked: BTreeMap<StreamName, Cut> = BTreeMap::new();
        let (mut batches, mut readings) = (0, 0);
        for (i, cut) in cuts.into_iter().enumerate() {
            let waiting = self.failing.get(&cut.stream).is_some_and(|(at, _)| *at > now);
            if let Some(p) = parked.get_mut(&cut.stream) {
                p.readings.extend(cut.readings);
                p.ids.extend(cut.ids);
                continue;
            }
            if waiting {
                parked.insert(cut.stream.clone(), cut);
                continue;
            }
            let sign = last.get(&cut.stream) == Some(&i);
            let (b, done, result) = self.seal(&cut, sign).await;
            batches += b;
            readings += done;
            match result {
                Ok(()) => {
                    self.failing.remove(&cut.stream);
                }
                Err(e) => {
                    let wait = self.failing.get(&cut.stream).map_or(RETRY_FIRST, |(_, w)| *w);
                    self.failing.insert(cut.stream.clone(), (now + wait, (wait * 2).min(RETRY_MAX)));
                    self.stats.seal_failures.fetch_add(1, Ordering::Relaxed);
                    error!(
                        "cannot seal {} readings of {}: {e}. They stay journaled and are tried again in {}; other streams go on",
                        cut.readings.len() - done,
                        cut.stream,
                        humantime::format_duration(wait)
                    );
                    let Cut { stream, mut readings, mut ids } = cut;
                    parked.insert(
                        stream.clone(),
                        Cut { stream, readings: readings.split_off(done), ids: ids.split_off(done) },
                    );
                }
            }
        }
        let mono = self.mono();
        for (_, cut) in parked {
            self.batcher.put_back(cut, mono);
        }
        (batches, readings)
    }

    /// Seals one cut (in as many batches as the format needs); returns the
    /// batches and readings sealed, and the error that stopped it, if any.
    async fn seal(&mut self, cut: &Cut, sign: bool) -> (usize, usize, Result<()>) {
        let batches = into_batches(&cut.readings);
        let n = batches.len();
        let (mut sealed, mut done) = (0, 0);
        for (i, (readings, last)) in batches.into_iter().enumerate() {
            let signed = sign && i + 1 == n;
            match self.seal_one(&cut.stream, &readings, signed, cut.ids[last]).await {
                Ok(()) => {
                    sealed += 1;
                    done = last + 1;
                }
                Err(e) => return (sealed, done, Err(e)),
            }
        }
        (sealed, done, Ok(()))
    }

    async fn seal_one(
        &mut self,
        stream: &StreamName,
        readings: &edgeseal_core::Readings,
        signed: bool,
        last_id: i64,
    ) -> Result<()> {
        let signer = signed.then_some(&*self.identity);
        let st = self.local.stream_state(stream).await.map_err(Error::Local)?;
        let key = self.identity.epoch_key(stream, st.epoch);
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| Error::Internal(format!("no system randomness: {e}")))?;
        let params = SealParams {
            device: self.identity.device_id(),
            stream: stream.clone(),
            seq: st.next_seq,
            epoch: st.epoch,
            prev: st.head,
            salt,
        };
        let sealed = seal(readings, &params, &key, signer, &mut self.scratch)?;
        let row = BatchRow::from(sealed);
        self.local.commit_sealed(&row, Some(last_id)).await.map_err(Error::Local)?;
        self.stats.sealed.fetch_add(1, Ordering::Relaxed);
        debug!("sealed batch {} of {} ({} readings)", row.seq, row.stream, row.count);
        self.wake.drainer.notify_one();
        self.wake.publisher.notify_one();
        Ok(())
    }
}
