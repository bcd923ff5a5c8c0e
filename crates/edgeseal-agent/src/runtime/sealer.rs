//! The sealer: checks and journals accepted readings (state.db), cuts them
//! into batches and seals them into the outbox. The batcher has one owner,
//! this task; the service reaches it through [`SealerCommand`]s.
//!
//! Group commit: whatever the sources handed over is journaled at once, in
//! one transaction (a row per stream, not per reading); while that commit is
//! on disk the next readings gather in the channel and make the next group.
//! An idle agent commits each reading as it comes; a busy one commits many per
//! transaction, with no fixed window either way. The batches a group cuts are
//! sealed and recorded in one more transaction.
//!
//! A reading that could never be sealed (a time outside 0000–9999, a label
//! over 256 bytes, a blob over the limit) is refused and counted before it
//! is journaled, so it can never wedge the agent. A stream whose batch fails
//! to seal (state.db trouble) keeps its readings in the journal and in
//! order, is tried again with backoff, and holds up no other stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeseal_core::envelope::{BatchHash, SealParams, seal_with};
use edgeseal_core::keys::{Identity, LeafCache};
use edgeseal_core::reading::into_batches;
use edgeseal_core::{Reading, StreamName};
use edgeseal_sensors::batcher::{Batcher, Cut, Policy};
use edgeseal_store::BatchRow;
use edgeseal_store::local::{LocalState, Run, Sealed};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::frames::FrameTap;
use super::{Stats, sleep_until_opt};
use crate::batching::describe_policy;
use crate::service::SealerCommand;
use crate::views::StoreNowView;
use crate::{Error, Result};

/// Most readings journaled in one transaction (and the size of the channel
/// the sources fill, so one group can take all that waits).
pub const JOURNAL_MAX: usize = 16 * 1024;
/// Most batches recorded in one transaction (a round that cuts more, such as
/// a resumed journal at one reading per batch, is recorded in several).
const ROUND_MAX: usize = 4096;
/// A stream's batches are signed at least this often, which bounds what a
/// signed batch covers (this round and the one before: under 2 × this).
const SIGN_EVERY: usize = 1024;
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
    /// The journal position of each stream's next accepted reading.
    next_pos: HashMap<StreamName, u64>,
    /// Accepted readings, for live frames.
    frames: FrameTap,
    /// Each stream's leaf keys, for the epoch it seals under.
    leaves: HashMap<StreamName, (u32, LeafCache)>,
    /// When the agent shares through a broker: the largest blob a peer could receive.
    share_max_blob: Option<usize>,
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
        frames: FrameTap,
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
            next_pos: HashMap::new(),
            frames,
            leaves: HashMap::new(),
            share_max_blob: None,
        }
    }

    /// Refuses blobs over `max` bytes at acceptance (an agent that shares
    /// through a broker: no peer could ever receive a larger one).
    pub fn sharing_blobs_up_to(mut self, max: Option<usize>) -> Sealer {
        self.share_max_blob = max;
        self
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
                    // Whatever waits is one group: no window to wait out.
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

    /// Readings journaled before the last stop are batched again, at their
    /// journal positions.
    async fn resume(&mut self) {
        // Grants begin and end at times no batch may straddle.
        match self.local.grants_out().await {
            Ok(grants) => {
                for (stream, times) in crate::share::cut_times(&grants) {
                    self.batcher.cut_at(&stream, &times);
                }
            }
            Err(e) => warn!("cannot read the grants given, so batches are not cut at their times: {e}"),
        }
        let (journaled, damaged) = match self.local.journal_open().await {
            Ok(j) => j,
            Err(e) => return error!("cannot read the readings journaled before the last stop: {e}"),
        };
        for d in damaged {
            error!("{d}: state.db is damaged there, and those readings cannot be sealed");
        }
        let waiting: usize = journaled.iter().map(|j| j.readings.len()).sum();
        if waiting > 0 {
            info!("resuming {waiting} readings accepted before the last stop");
        }
        let mut cuts = Vec::new();
        for j in journaled {
            self.next_pos.insert(j.stream, j.next_pos);
            for (pos, r) in j.readings {
                if self.batcher.watching() {
                    cuts.extend(self.batcher.at_boundary(&r));
                }
                cuts.extend(self.batcher.push(pos as i64, r, self.mono()));
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
            SealerCommand::CutAt(stream, times) => {
                let cuts = self.batcher.cut_at(&stream, &times);
                self.seal_round(cuts).await;
            }
        }
    }

    /// Why `r` cannot be accepted, if it cannot: (the metric's reason, the text): it could
    /// never be sealed, or (sharing through a broker) never reach a peer.
    fn refusal(&self, r: &Reading) -> Option<(&'static str, String)> {
        if let Err(why) = r.check() {
            return Some((why.reason(), why.to_string()));
        }
        match (self.share_max_blob, &r.value) {
            (Some(max), edgeseal_core::Value::Blob { data, .. }) if data.len() > max => Some((
                "blob_too_large_to_share",
                format!(
                    "its blob is {} bytes, more than the {} MiB one MQTT message carries, and this agent \
                     shares through a broker: no peer could ever receive it",
                    data.len(),
                    max >> 20
                ),
            )),
            _ => None,
        }
    }

    /// Accepts what can be sealed: journals it (one transaction, a run per
    /// stream) and batches it.
    async fn accept(&mut self, buf: &mut Vec<Reading>) {
        if buf.is_empty() {
            return;
        }
        // Per stream, in order of arrival.
        let mut streams: Vec<(StreamName, Vec<Reading>)> = Vec::new();
        let mut index: HashMap<StreamName, usize> = HashMap::new();
        for r in buf.drain(..) {
            if let Some((reason, why)) = self.refusal(&r) {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.stats.refuse(reason, 1);
                let kind = format!("refused {} {reason}", r.stream);
                crate::quiet::once_a_minute(&kind, |more| warn!("refused a reading of {}: {why}{more}", r.stream));
                continue;
            }
            match index.get(&r.stream) {
                Some(&i) => streams[i].1.push(r),
                None => {
                    index.insert(r.stream.clone(), streams.len());
                    streams.push((r.stream.clone(), vec![r]));
                }
            }
        }
        let runs: Vec<Run> = streams
            .iter()
            .map(|(s, rs)| Run { stream: s, first_pos: self.next_pos.get(s).copied().unwrap_or(0), readings: rs })
            .collect();
        let n: usize = runs.iter().map(|r| r.readings.len()).sum();
        if n == 0 {
            return;
        }
        if let Err(e) = self.local.journal_append(&runs).await {
            self.stats.refused.fetch_add(n as u64, Ordering::Relaxed);
            self.stats.refuse("journal_failed", n as u64);
            error!("cannot journal {n} readings in state.db, so they were not accepted: {e}");
            return;
        }
        self.stats.accepted.fetch_add(n as u64, Ordering::Relaxed);
        let device = self.identity.device_id();
        let mut cuts = Vec::new();
        let mono = self.mono();
        for (stream, readings) in streams {
            self.stats.live.accepted(device, &readings);
            let first = self.next_pos.get(&stream).copied().unwrap_or(0);
            self.frames.offer(&stream, first, &readings, &self.stats);
            let next = self.next_pos.entry(stream).or_insert(0);
            for r in readings {
                if self.batcher.watching() {
                    cuts.extend(self.batcher.at_boundary(&r));
                }
                cuts.extend(self.batcher.push(*next as i64, r, mono));
                *next += 1;
            }
        }
        self.seal_round(cuts).await;
    }

    /// Seals what one round cut and records it (one transaction per
    /// [`ROUND_MAX`] batches); returns (batches, readings) recorded. Only the
    /// last batch of each stream in the round is signed: it covers the earlier
    /// ones through their chain links (format.md), so a burst of small batches
    /// (the live "every reading" cadence) costs one signature per stream and
    /// round, and every round ends on a signed batch. A stream that fails (or
    /// waits to be tried again) has its readings put back, oldest first, and
    /// holds up no other: when the round's transaction fails, each stream's
    /// batches are recorded on their own.
    async fn seal_round(&mut self, cuts: Vec<Cut>) -> (usize, usize) {
        let (mut batches, mut readings) = (0, 0);
        let mut cuts = cuts.into_iter().peekable();
        while cuts.peek().is_some() {
            let round: Vec<Cut> = cuts.by_ref().take(ROUND_MAX).collect();
            let (b, r) = self.seal_some(round).await;
            batches += b;
            readings += r;
        }
        (batches, readings)
    }

    async fn seal_some(&mut self, cuts: Vec<Cut>) -> (usize, usize) {
        let now = Instant::now();
        // Each stream's cuts, in order; streams in order of their first cut.
        let mut per_stream: Vec<(StreamName, Vec<Cut>)> = Vec::new();
        for cut in cuts {
            match per_stream.iter_mut().find(|(s, _)| *s == cut.stream) {
                Some((_, cs)) => cs.push(cut),
                None => per_stream.push((cut.stream.clone(), vec![cut])),
            }
        }
        let mut sealed: Vec<Sealed> = Vec::new();
        let mut spans: Vec<(StreamName, std::ops::Range<usize>, Vec<Cut>)> = Vec::new();
        let mut parked: Vec<Vec<Cut>> = Vec::new();
        for (stream, cuts) in per_stream {
            if self.failing.get(&stream).is_some_and(|(at, _)| *at > now) {
                parked.push(cuts);
                continue;
            }
            let start = sealed.len();
            match self.seal_stream(&stream, &cuts, &mut sealed).await {
                Ok(()) => spans.push((stream, start..sealed.len(), cuts)),
                Err(e) => {
                    sealed.truncate(start);
                    self.failed(&stream, &cuts, &e, now);
                    parked.push(cuts);
                }
            }
        }
        let (mut batches, mut readings) = (0, 0);
        let all_at_once = self.local.commit_sealed(&sealed).await;
        for (stream, span, cuts) in spans {
            let result = match &all_at_once {
                Ok(()) => Ok(()),
                Err(_) => self.local.commit_sealed(&sealed[span.clone()]).await.map_err(Error::Local),
            };
            match result {
                Ok(()) => {
                    self.failing.remove(&stream);
                    batches += span.len();
                    readings += cuts.iter().map(|c| c.readings.len()).sum::<usize>();
                }
                Err(e) => {
                    self.failed(&stream, &cuts, &e, now);
                    parked.push(cuts);
                }
            }
        }
        if batches > 0 {
            self.stats.sealed.fetch_add(batches as u64, Ordering::Relaxed);
            debug!("sealed {batches} batches ({readings} readings)");
            self.wake.drainer.notify_one();
            self.wake.publisher.notify_one();
        }
        let mono = self.mono();
        for cuts in parked {
            // Oldest last, since each goes in front of what is open.
            for cut in cuts.into_iter().rev() {
                self.batcher.put_back(cut, mono);
            }
        }
        (batches, readings)
    }

    /// Notes that sealing `stream` failed: it is tried again after a backoff.
    fn failed(&mut self, stream: &StreamName, cuts: &[Cut], e: &Error, now: Instant) {
        let wait = self.failing.get(stream).map_or(RETRY_FIRST, |(_, w)| *w);
        self.failing.insert(stream.clone(), (now + wait, (wait * 2).min(RETRY_MAX)));
        self.stats.seal_failures.fetch_add(1, Ordering::Relaxed);
        error!(
            "cannot seal {} readings of {stream}: {e}. They stay journaled and are tried again in {}; other streams go on",
            cuts.iter().map(|c| c.readings.len()).sum::<usize>(),
            humantime::format_duration(wait)
        );
    }

    /// Seals one stream's cuts of a round (in as many batches as the format
    /// needs), numbered and chained after its recorded state. The last is
    /// signed (and every [`SIGN_EVERY`]th); a signed batch covers the
    /// unsigned ones of its round and, when the round before had any, that
    /// whole round too, so each batch is authentic on its own and losing any
    /// one (signed or not) costs only that one.
    async fn seal_stream(&mut self, stream: &StreamName, cuts: &[Cut], out: &mut Vec<Sealed>) -> Result<()> {
        let st = self.local.stream_state(stream).await.map_err(Error::Local)?;
        let (mut seq, mut prev) = (st.next_seq, st.head);
        let start = out.len();
        let leaves = match self.leaves.get_mut(stream) {
            Some((epoch, cache)) if *epoch == st.epoch => cache,
            _ => {
                let cache = LeafCache::new(&self.identity.epoch_key(stream, st.epoch));
                &mut self.leaves.entry(stream.clone()).insert_entry((st.epoch, cache)).into_mut().1
            }
        };
        // What the next signed batch covers, as state.db recorded it with the last round.
        let mut covers = st.covers;
        let mut round: Vec<BatchHash> = Vec::new();
        let groups: Vec<Vec<(edgeseal_core::Readings, usize)>> =
            cuts.iter().map(|c| into_batches(&c.readings)).collect();
        // Every batch's salt, from one call for the round.
        let mut salts = vec![0u8; 16 * groups.iter().map(Vec::len).sum::<usize>()];
        getrandom::fill(&mut salts).map_err(|e| Error::Internal(format!("no system randomness: {e}")))?;
        let mut salts = salts.chunks_exact(16);
        for (c, (cut, groups)) in cuts.iter().zip(groups).enumerate() {
            let n = groups.len();
            for (i, (readings, last)) in groups.into_iter().enumerate() {
                let sign = (c + 1 == cuts.len() && i + 1 == n) || round.len() + 1 >= SIGN_EVERY;
                let signer = sign.then_some(&*self.identity);
                let salt: [u8; 16] = salts.next().and_then(|s| s.try_into().ok()).expect("a salt per batch");
                let params = SealParams {
                    device: self.identity.device_id(),
                    stream: stream.clone(),
                    seq,
                    epoch: st.epoch,
                    prev,
                    salt,
                    covers: if sign { std::mem::take(&mut covers) } else { Vec::new() },
                };
                let sealed = seal_with(&readings, &params, leaves, signer, &mut self.scratch)?;
                prev = sealed.hash;
                seq += 1;
                round.push(sealed.hash);
                if sign {
                    // The next signed batch covers this round too, if it had unsigned batches.
                    covers = if round.len() > 1 { std::mem::take(&mut round) } else { Vec::new() };
                    round.clear();
                } else {
                    covers.push(sealed.hash);
                }
                let sealed_pos = u64::try_from(cut.ids[last]).unwrap_or(0) + 1;
                out.push(Sealed { row: BatchRow::from(sealed), sealed_pos, covers: Vec::new() });
            }
        }
        if out.len() > start
            && let Some(last) = out.last_mut()
        {
            last.covers = covers;
        }
        Ok(())
    }
}
