//! Reading a stream back: fetch rows and checkpoints, inspect every row (on
//! all cores), audit the chain, and open the authentic batches.

use edgeseal_core::chain::{self, Audit, Head, Inspected, Row, Scope};
use edgeseal_core::keys::EpochKey;
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
    if let Some(to) = range.to {
        rows.extend(covering_rows(store, device, stream, to, &rows).await?);
    }
    let checkpoints = store.checkpoints(device, stream, CHECKPOINTS).await?;
    let inspected = inspect_all(device, stream, &rows);
    let cps: Vec<&[u8]> = checkpoints.iter().map(Vec::as_slice).collect();
    let audit = chain::audit(device, stream, &inspected, &cps, remembered, scope);
    Ok(StreamRead { rows, audit })
}

/// The sealer signs only the last batch of a burst, which covers the earlier
/// ones through the chain; a range that ends inside such a run is read on (in
/// doubling windows, up to a day) to the signed batch that covers it.
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
    K: Fn(u32) -> Option<EpochKey> + Sync,
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
    K: Fn(u32) -> Option<EpochKey> + Sync,
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
