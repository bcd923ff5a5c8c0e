//! Reading a stream back: rows off the store as the database sends them,
//! inspected a chunk at a time on all cores, audited as they come
//! ([`chain::Auditor`]), and handed on as soon as each one's status is known.
//! Memory stays constant whatever the stream's length: a reader holds the
//! rows of one chunk and those still waiting for a signed batch to cover them.

use std::collections::VecDeque;

use edgeseal_core::chain::{self, Audit, Auditor, Finding, Head, Inspected, Row, Scope, Status};
use edgeseal_core::keys::EpochKeys;
use edgeseal_core::{DeviceId, Readings, StreamName};
use futures_util::StreamExt as _;

use crate::{Result, Store, StoredBatch, TimeRange};

/// How many checkpoints to consider (the newest ones).
const CHECKPOINTS: u32 = 16;
/// Rows inspected together (in parallel), and handed on together.
const CHUNK: usize = 512;
const CHUNK_BYTES: usize = 8 << 20;

/// Rows of a stream with their audit, all at once ([`read_stream`]).
#[derive(Debug, Default)]
pub struct StreamRead {
    pub rows: Vec<StoredBatch>,
    /// Its `statuses` are those of `rows`, one each.
    pub audit: Audit,
}

impl StreamRead {
    /// Takes a chunk of rows as [`read_stream_with`] hands them on, to hold them all.
    pub fn take(&mut self, chunk: Vec<(StoredBatch, Status)>) -> Result<()> {
        for (r, s) in chunk {
            self.rows.push(r);
            self.audit.statuses.push(s);
        }
        Ok(())
    }

    /// The rows held, with the audit of the read that handed them on.
    pub fn with(mut self, audit: Audit) -> StreamRead {
        let statuses = std::mem::take(&mut self.audit.statuses);
        StreamRead { rows: self.rows, audit: Audit { statuses, ..audit } }
    }
}

/// What to read and what to check it against.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    pub range: TimeRange,
    /// This reader's highest known head of the stream.
    pub remembered: Option<Head>,
    pub scope: Scope,
    /// Hand on the rows' sealed bytes (to open them); without, only their numbers and columns.
    pub bytes: bool,
}

/// Fetches and audits a stream, all at once: for ranges a caller holds anyway.
pub async fn read_stream<S: Store>(
    store: &S,
    device: DeviceId,
    stream: &StreamName,
    range: TimeRange,
    remembered: Option<Head>,
    scope: Scope,
) -> Result<StreamRead> {
    let mut read = StreamRead::default();
    let opts = ReadOptions { range, remembered, scope, bytes: true };
    let audit = read_stream_with(store, device, stream, opts, |chunk| read.take(chunk)).await?;
    Ok(read.with(audit))
}

/// Reads a stream in the store's order and audits it as it goes: `shown`
/// gets the rows in order, a chunk at a time, each with its status once
/// nothing later can change it. A time range is read with the batch just
/// before it and the one just after it, and on to the signed batch that
/// covers them, so both ends are shown complete. Returns the audit (its
/// `statuses` are those handed on, so empty here).
pub async fn read_stream_with<S, F>(
    store: &S,
    device: DeviceId,
    stream: &StreamName,
    opts: ReadOptions,
    shown: F,
) -> Result<Audit>
where
    S: Store,
    F: FnMut(Vec<(StoredBatch, Status)>) -> Result<()>,
{
    let checkpoints = store.checkpoints(device, stream, CHECKPOINTS).await?;
    let retentions = store.retentions(device, stream).await?;
    let cps: Vec<&[u8]> = checkpoints.iter().map(Vec::as_slice).collect();
    let rets: Vec<&[u8]> = retentions.iter().map(Vec::as_slice).collect();
    let auditor = Auditor::new(device, stream, &cps, &rets, opts.remembered, opts.scope);
    let mut feed =
        Feed { device, stream, auditor, opts, chunk: Vec::new(), bytes: 0, held: VecDeque::new(), last: None, shown };
    let range = opts.range;
    let bounded = range.from.is_some() || range.to.is_some();
    let mut edges = Vec::new();
    let head = if bounded { store.head_seq(device, stream).await? } else { None };
    let mut rows = store.batches_stream(device, stream, range).peekable();
    if let Some(head) = head {
        let first = match std::pin::Pin::new(&mut rows).peek().await {
            Some(Ok(r)) => Some(r.seq),
            _ => None,
        };
        match first {
            Some(lo) => {
                if range.from.is_some()
                    && let Some(before) = lo.checked_sub(1)
                {
                    edges.extend(feed.edge(store, before, head, true).await?);
                }
            }
            None => {
                let prev = match range.from {
                    Some(f) => store.last_before(device, stream, f).await?,
                    None => None,
                };
                // Nothing ends before the range: the stream's first batch must come after it.
                let after = prev.as_ref().map_or(Some(feed.auditor.start()), |p| p.seq.checked_add(1));
                if let Some(p) = prev {
                    feed.push(p)?;
                }
                if let Some(after) = after {
                    edges.extend(feed.edge(store, after, head, false).await?);
                }
            }
        }
    }
    let mut read_any = false;
    while let Some(r) = rows.next().await {
        read_any = true;
        feed.push(r?)?;
    }
    drop(rows);
    if let Some(head) = head {
        if read_any && let Some(after) = feed.last.and_then(|(seq, ..)| seq.checked_add(1)) {
            edges.extend(feed.edge(store, after, head, false).await?);
        }
        // Rows that end inside a run of unsigned batches are read on to the signed batch that covers them.
        if let Some((seq, last_ts, false)) = feed.last {
            feed.cover_from(store, seq, last_ts).await?;
        }
    }
    let mut audit = feed.finish()?;
    if !edges.is_empty() {
        audit.findings.extend(edges);
        audit.findings.sort_by_key(Finding::order);
    }
    Ok(audit)
}

/// Whether a row says it is a signed batch (its flags byte; the audit checks the rest):
/// enough to know whether to read on to the one that covers it.
fn signed(r: &StoredBatch) -> bool {
    r.sealed.get(4).is_some_and(|f| f & edgeseal_core::envelope::FLAG_SIGNED != 0)
}

/// Rows on their way through inspection and the audit.
struct Feed<'a, F> {
    device: DeviceId,
    stream: &'a StreamName,
    auditor: Auditor,
    opts: ReadOptions,
    /// Rows not inspected yet, and their bytes.
    chunk: Vec<StoredBatch>,
    bytes: usize,
    /// Rows audited whose status is not known yet, in order.
    held: VecDeque<StoredBatch>,
    /// The last row read: its number, end, and whether it is a signed batch.
    last: Option<(u64, i64, bool)>,
    shown: F,
}

impl<F> Feed<'_, F>
where
    F: FnMut(Vec<(StoredBatch, Status)>) -> Result<()>,
{
    fn push(&mut self, r: StoredBatch) -> Result<()> {
        self.last = Some((r.seq, r.last_ts, signed(&r)));
        self.bytes += r.sealed.len();
        self.chunk.push(r);
        if self.chunk.len() >= CHUNK || self.bytes >= CHUNK_BYTES { self.flush() } else { Ok(()) }
    }

    /// The batch just outside a range, by number from `seq` (down from it
    /// `at_start`, else up), read on while the batches still overlap the
    /// range (new ones, or ones the store left out of its answer) to the first
    /// that does not: the one that shows the range complete at that end. A
    /// number the store should hold (at most `head`, at least where retention
    /// starts the stream) but does not is a finding.
    async fn edge<S: Store>(&mut self, store: &S, seq: u64, head: u64, at_start: bool) -> Result<Option<Finding>> {
        const STEP: u64 = 64;
        let (from, to) = (self.opts.range.from.unwrap_or(i64::MIN), self.opts.range.to.unwrap_or(i64::MAX));
        let start = self.auditor.start();
        let mut found = Vec::new();
        let mut expect = Some(seq);
        let mut finding = None;
        'walk: while let Some(s) = expect.filter(|&s| s <= head && s >= start) {
            let (lo, hi) = match at_start {
                true => (s.saturating_sub(STEP - 1).max(start), s),
                false => (s, s.saturating_add(STEP - 1).min(head)),
            };
            let mut rows = store.batches_by_seq(self.device, self.stream, lo, hi).await?;
            if at_start {
                rows.reverse();
            }
            let mut rows = rows.into_iter().peekable();
            for _ in lo..=hi {
                let Some(n) = expect else { break 'walk };
                let Some(r) = rows.next_if(|r| r.seq == n) else {
                    finding = Some(Finding::RangeEdgeMissing { seq: n, at_start });
                    break 'walk;
                };
                let overlaps = r.last_ts >= from && r.first_ts <= to;
                found.push(r);
                if !overlaps {
                    break 'walk;
                }
                expect = if at_start { n.checked_sub(1) } else { n.checked_add(1) };
            }
        }
        if at_start {
            found.reverse();
        }
        for r in found {
            self.push(r)?;
        }
        Ok(finding)
    }

    /// The sealer signs only the last batch of a burst, which covers the
    /// earlier ones: rows after `seq` (ending at `to` or later) are read on,
    /// in growing windows up to a day, to the signed batch that covers it.
    async fn cover_from<S: Store>(&mut self, store: &S, seq: u64, to: i64) -> Result<()> {
        let mut span = 1_000i64;
        while span <= 86_400_000 {
            let range = TimeRange { from: Some(to), to: Some(to.saturating_add(span)) };
            let after: Vec<StoredBatch> =
                store.batches(self.device, self.stream, range).await?.into_iter().filter(|r| r.seq > seq).collect();
            if let Some(i) = after.iter().position(signed) {
                for r in after.into_iter().take(i + 1) {
                    self.push(r)?;
                }
                return Ok(());
            }
            span *= 4;
        }
        Ok(())
    }

    /// Inspects the rows waiting (in parallel), audits them, and hands on those decided.
    fn flush(&mut self) -> Result<()> {
        let mut rows = std::mem::take(&mut self.chunk);
        self.bytes = 0;
        for i in inspect_all(self.device, self.stream, &rows) {
            self.auditor.push(i);
        }
        if !self.opts.bytes {
            for r in &mut rows {
                r.sealed = Vec::new();
            }
        }
        self.held.extend(rows);
        let decided: Vec<Status> = self.auditor.settled().collect();
        self.hand_on(decided)
    }

    fn hand_on(&mut self, decided: Vec<Status>) -> Result<()> {
        if decided.is_empty() {
            return Ok(());
        }
        let out: Vec<(StoredBatch, Status)> = self.held.drain(..decided.len()).zip(decided).collect();
        (self.shown)(out)
    }

    fn finish(mut self) -> Result<Audit> {
        self.flush()?;
        let Feed { auditor, mut held, mut shown, .. } = self;
        let mut audit = auditor.finish();
        let rest: Vec<(StoredBatch, Status)> = held.drain(..).zip(std::mem::take(&mut audit.statuses)).collect();
        if !rest.is_empty() {
            shown(rest)?;
        }
        Ok(audit)
    }
}

/// Inspects rows in parallel.
pub fn inspect_all(device: DeviceId, stream: &StreamName, rows: &[StoredBatch]) -> Vec<Inspected> {
    par_map(rows, |r| {
        chain::inspect(
            device,
            stream,
            Row {
                seq: r.seq,
                first_ts: r.first_ts,
                last_ts: r.last_ts,
                count: r.count,
                epoch: r.epoch,
                hash: &r.hash,
                bytes: &r.sealed,
            },
        )
    })
}

/// Opens the authentic rows in parallel; `key` gives the key of an epoch
/// (`None` if this reader does not hold it). Non-authentic rows give `None`.
pub fn open_all<K>(read: &StreamRead, key: K) -> Vec<Option<std::result::Result<Readings, edgeseal_core::Error>>>
where
    K: Fn(u32) -> Option<EpochKeys> + Sync,
{
    open_rows(read, 0..read.rows.len(), &key)
}

/// [`open_all`] for the rows in `range` only.
pub fn open_rows<K>(
    read: &StreamRead,
    range: std::ops::Range<usize>,
    key: &K,
) -> Vec<Option<std::result::Result<Readings, edgeseal_core::Error>>>
where
    K: Fn(u32) -> Option<EpochKeys> + Sync,
{
    let rows: Vec<(&StoredBatch, Status)> =
        read.rows[range.clone()].iter().zip(read.audit.statuses[range].iter().copied()).collect();
    open_batches(&rows, key)
}

/// Opens rows (with their statuses) in parallel, as [`read_stream_with`] hands them on.
pub fn open_batches<K, B>(
    rows: &[(B, Status)],
    key: &K,
) -> Vec<Option<std::result::Result<Readings, edgeseal_core::Error>>>
where
    K: Fn(u32) -> Option<EpochKeys> + Sync,
    B: std::borrow::Borrow<StoredBatch> + Sync,
{
    par_map(rows, |(r, status)| {
        if !status.is_authentic() {
            return None;
        }
        let parsed = match edgeseal_core::envelope::parse(&r.borrow().sealed) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let key = key(parsed.header.epoch)?;
        Some(parsed.open(&key))
    })
}

/// Maps `f` over `items` on every available core, keeping order.
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || items.len() < 64 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(chunk).map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("reader threads do not panic")).collect()
    })
}
