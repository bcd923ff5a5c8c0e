//! Reading a stream back: fetch rows and checkpoints, inspect every row (on
//! all cores), audit the chain, and open the authentic batches.

use edgeseal_core::chain::{self, Audit, Finding, Head, Inspected, Row, Scope};
use edgeseal_core::keys::EpochKeys;
use edgeseal_core::{DeviceId, Readings, StreamName};

use crate::{Result, Store, StoredBatch, TimeRange};

/// How many checkpoints to consider (the newest ones).
const CHECKPOINTS: u32 = 16;

/// Rows of a stream with their audit.
#[derive(Debug)]
pub struct StreamRead {
    pub rows: Vec<StoredBatch>,
    pub audit: Audit,
}

/// Fetches and audits a stream. `remembered` is this reader's highest known head.
pub async fn read_stream<S: Store>(
    store: &S,
    device: DeviceId,
    stream: &StreamName,
    range: TimeRange,
    remembered: Option<Head>,
    scope: Scope,
) -> Result<StreamRead> {
    let mut rows = store.batches(device, stream, range).await?;
    let mut edge_findings = Vec::new();
    if range.from.is_some() || range.to.is_some() {
        edge_findings = add_edges(store, device, stream, range, &mut rows).await?;
        if let Some(last) = rows.last().map(|r| r.last_ts) {
            rows.extend(covering_rows(store, device, stream, last, &rows).await?);
        }
    }
    let checkpoints = store.checkpoints(device, stream, CHECKPOINTS).await?;
    let inspected = inspect_all(device, stream, &rows);
    let cps: Vec<&[u8]> = checkpoints.iter().map(Vec::as_slice).collect();
    let mut audit = chain::audit(device, stream, &inspected, &cps, remembered, scope);
    audit.findings.extend(edge_findings);
    Ok(StreamRead { rows, audit })
}

/// A time range is shown complete at both ends by the batches just outside
/// it: the one before its first batch and the one after its last (for a
/// range that holds none, the last batch before it and the one after that),
/// which the audit then checks in the chain with the rest. An edge batch the
/// store should hold (its number is below the store's newest) but does not
/// is a finding. A range after the stream's newest batch, as `--from -10m`
/// on an idle agent, reads that batch, so the stream's end is shown too.
async fn add_edges<S: Store>(
    store: &S,
    device: DeviceId,
    stream: &StreamName,
    range: TimeRange,
    rows: &mut Vec<StoredBatch>,
) -> Result<Vec<Finding>> {
    let Some(head) = store.head_seq(device, stream).await? else {
        return Ok(Vec::new()); // nothing stored: the audit's checkpoint check speaks
    };
    let lo = rows.iter().map(|r| r.seq).min();
    let hi = rows.iter().map(|r| r.seq).max();
    let (before, after) = match (lo, hi) {
        (Some(lo), Some(hi)) => (range.from.and(lo.checked_sub(1)), hi.checked_add(1)),
        _ => {
            let prev = match range.from {
                Some(f) => store.last_before(device, stream, f).await?,
                None => None,
            };
            match prev {
                Some(p) => {
                    let next = p.seq.checked_add(1);
                    rows.push(p);
                    (None, next)
                }
                // Nothing ends before the range: the stream's first batch must come after it.
                None => (None, Some(0)),
            }
        }
    };
    let mut findings = Vec::new();
    for (seq, at_start) in [(before, true), (after, false)] {
        let Some(seq) = seq.filter(|&s| s <= head) else { continue };
        if rows.iter().any(|r| r.seq == seq) {
            continue;
        }
        match store.batches_by_seq(device, stream, seq, seq).await?.into_iter().next() {
            Some(r) => rows.push(r),
            None => findings.push(Finding::RangeEdgeMissing { seq, at_start }),
        }
    }
    rows.sort_by_key(|r| r.seq);
    Ok(findings)
}

/// The sealer signs only the last batch of a burst, which covers the earlier
/// ones through the chain; rows that end inside such a run are read on from
/// `to` (in growing windows, up to a day) to the signed batch that covers them.
async fn covering_rows<S: Store>(
    store: &S,
    device: DeviceId,
    stream: &StreamName,
    to: i64,
    rows: &[StoredBatch],
) -> Result<Vec<StoredBatch>> {
    let signed = |r: &StoredBatch| edgeseal_core::envelope::parse(&r.sealed).is_ok_and(|p| p.is_signed());
    let Some(last) = rows.last().filter(|r| !signed(r)) else {
        return Ok(Vec::new());
    };
    let mut span = 1_000i64;
    while span <= 86_400_000 {
        let more =
            store.batches(device, stream, TimeRange { from: Some(to), to: Some(to.saturating_add(span)) }).await?;
        let after: Vec<StoredBatch> = more.into_iter().filter(|r| r.seq > last.seq).collect();
        if let Some(i) = after.iter().position(signed) {
            return Ok(after.into_iter().take(i + 1).collect());
        }
        span *= 4;
    }
    Ok(Vec::new())
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

/// [`open_all`] for the rows in `range` only, so callers can stream large reads.
pub fn open_rows<K>(
    read: &StreamRead,
    range: std::ops::Range<usize>,
    key: &K,
) -> Vec<Option<std::result::Result<Readings, edgeseal_core::Error>>>
where
    K: Fn(u32) -> Option<EpochKeys> + Sync,
{
    let indices: Vec<usize> = range.collect();
    par_map(&indices, |&i| {
        if !read.audit.statuses[i].is_authentic() {
            return None;
        }
        let parsed = match edgeseal_core::envelope::parse(&read.rows[i].sealed) {
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
