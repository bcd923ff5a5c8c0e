//! Where sealed batches live.
//!
//! [`Store`] is the untrusted remote store: SQLite (the default, a file in the
//! data directory), PostgreSQL or MySQL/MariaDB, chosen by URL through
//! [`AnyStore::connect`]. It holds ciphertext and the header's clear metadata
//! only. [`local::LocalState`] is the agent's own durable state: the journal of
//! accepted readings, the outbox of sealed batches not yet stored, per-stream
//! sequence numbers, and the heads this reader has seen.

#![forbid(unsafe_code)]

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use edgeseal_core::{DeviceId, StreamName};
use futures_util::stream::{BoxStream, StreamExt as _, TryStreamExt as _};
use sqlx::Row as _;

pub mod local;
pub mod reader;
mod url;

pub use url::redact_url;

/// Errors of the store crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach the store at {url}: {cause}. Check that the database is running and that --store / EDGESEAL_STORE is right"
    )]
    Unreachable { url: String, cause: sqlx::Error },
    #[error("unsupported store URL {0:?}: use sqlite://PATH, postgres://USER@HOST/DB or mysql://USER@HOST/DB")]
    BadUrl(String),
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("updating the store's schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the store returned a malformed row: {0}")]
    BadRow(&'static str),
    /// The one reading rows stopped taking them (its output failed).
    #[error("the reader of the rows stopped")]
    Stopped,
    #[error(
        "this agent keeps no store of its own (store = \"broker\"): its batches go through the MQTT broker to `edgeseal ingest`, which stores them; read them there (--store with the URL ingest writes to)"
    )]
    ThroughBroker,
}

/// The `store` setting of a device that keeps no store: its batches go to `edgeseal ingest` through the broker.
pub const THROUGH_BROKER: &str = "broker";

impl Error {
    /// True when retrying later may succeed (the database is down or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Query(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)
                ) || matches!(e, sqlx::Error::Database(d) if d.message().contains("locked"))
            }
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A sealed batch with the clear metadata the store indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    pub device: DeviceId,
    pub stream: StreamName,
    pub seq: u64,
    pub first_ts: i64,
    pub last_ts: i64,
    pub count: u32,
    pub epoch: u32,
    pub hash: [u8; 32],
    pub sealed: Vec<u8>,
}

impl BatchRow {
    /// The row for a sealed batch: its clear columns come from its own header.
    pub fn new(h: edgeseal_core::envelope::Header, hash: edgeseal_core::envelope::BatchHash, sealed: Vec<u8>) -> Self {
        BatchRow {
            device: h.device,
            stream: h.stream,
            seq: h.seq,
            first_ts: h.first_ts,
            last_ts: h.last_ts,
            count: h.count,
            epoch: h.epoch,
            hash: hash.0,
            sealed,
        }
    }
}

impl From<edgeseal_core::envelope::Sealed> for BatchRow {
    fn from(s: edgeseal_core::envelope::Sealed) -> BatchRow {
        BatchRow::new(s.header, s.hash, s.bytes)
    }
}

/// A batch as read back: the clear columns (untrusted) and the sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    pub seq: u64,
    pub first_ts: i64,
    pub last_ts: i64,
    /// The clear columns as stored (the reader checks them against the signed header).
    pub count: i64,
    pub epoch: i64,
    pub hash: Vec<u8>,
    pub sealed: Vec<u8>,
}

/// A summary of one stream in the store, from clear metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub device: DeviceId,
    pub stream: String,
    pub batches: u64,
    pub readings: u64,
    pub first_ts: i64,
    pub last_ts: i64,
    pub head_seq: u64,
}

/// What [`Store::put_batches`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutReport {
    pub inserted: usize,
    /// Already stored with identical content (a retry after a lost acknowledgement).
    pub already_present: usize,
    /// Indexes (into the input) of rows whose number is taken by different content.
    pub conflicts: Vec<usize>,
}

/// An inclusive time range in ms since the Unix epoch; `None` is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// The storage trait every backend implements.
pub trait Store: Send + Sync {
    /// Creates or upgrades the schema.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;
    /// Stores batches, idempotently on (device, stream, seq).
    fn put_batches(&self, rows: &[BatchRow]) -> impl Future<Output = Result<PutReport>> + Send;
    /// Stores a signed checkpoint, idempotently.
    fn put_checkpoint(
        &self,
        device: DeviceId,
        stream: &StreamName,
        seq: u64,
        sealed: &[u8],
    ) -> impl Future<Output = Result<()>> + Send;
    /// All streams with their clear metadata.
    fn streams(&self) -> impl Future<Output = Result<Vec<StreamInfo>>> + Send;
    /// Batches of a stream overlapping `range`, in sequence order.
    fn batches<'a>(
        &'a self,
        device: DeviceId,
        stream: &'a StreamName,
        range: TimeRange,
    ) -> impl Future<Output = Result<Vec<StoredBatch>>> + Send + 'a {
        self.batches_stream(device, stream, range).try_collect()
    }
    /// The same, row by row as the database sends them: memory stays
    /// constant however many rows the range holds.
    fn batches_stream<'a>(
        &'a self,
        device: DeviceId,
        stream: &'a StreamName,
        range: TimeRange,
    ) -> BoxStream<'a, Result<StoredBatch>>;
    /// Batches of a stream numbered `first..=last`, in sequence order.
    fn batches_by_seq(
        &self,
        device: DeviceId,
        stream: &StreamName,
        first: u64,
        last: u64,
    ) -> impl Future<Output = Result<Vec<StoredBatch>>> + Send;
    /// The batch of a stream that ends last before `ts` (the one before a time range).
    fn last_before(
        &self,
        device: DeviceId,
        stream: &StreamName,
        ts: i64,
    ) -> impl Future<Output = Result<Option<StoredBatch>>> + Send;
    /// The highest sequence number the store holds of a stream.
    fn head_seq(&self, device: DeviceId, stream: &StreamName) -> impl Future<Output = Result<Option<u64>>> + Send;
    /// The `limit` highest-numbered checkpoints of a stream.
    fn checkpoints(
        &self,
        device: DeviceId,
        stream: &StreamName,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send;
    /// Stores a signed retention record (idempotently), then removes the
    /// stream's batches below `from`, its checkpoints below `from` but the
    /// newest, and its older records: in transactions of [`DELETE_CHUNK`]
    /// batches, so a large first cut does not hold up writers. The caller has
    /// checked the record. Returns how many batches it removed.
    fn retain(
        &self,
        device: DeviceId,
        stream: &StreamName,
        from: u64,
        record: &[u8],
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Stores a grant `owner` signed for `peer` (the caller checked the
    /// signature), unless the store holds a newer one of that owner, stream and peer.
    fn put_grant(
        &self,
        owner: DeviceId,
        stream: &StreamName,
        peer: DeviceId,
        issued_ms: i64,
        grant: &[u8],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Every grant addressed to `peer`, newest per owner and stream.
    fn grants_to(&self, peer: DeviceId) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send;
    /// A stream's retention records (normally one, the newest).
    fn retentions(&self, device: DeviceId, stream: &StreamName) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send;
    /// The store's URL with any password removed.
    fn url(&self) -> &str;
}

/// Batches per multi-row insert (9 parameters each: within every backend's limit).
const ROWS_PER_INSERT: usize = 256;
/// What a time range's end and a batch's span are each capped at in SQL, so their sum fits an i64.
const SPAN_CAP: i64 = 4_611_686_018_427_387_903;
/// Batches removed per transaction by [`Store::retain`].
pub const DELETE_CHUNK: i64 = 10_000;
/// A multi-row insert stops adding batches past this many sealed bytes (MySQL's packet limit).
const BYTES_PER_INSERT: usize = 4 << 20;

/// The SQL one backend speaks.
struct Dialect {
    /// A multi-row insert of batches that skips rows already present: `head` VALUES … `tail`.
    insert_batches: (&'static str, &'static str),
    batch_hash: &'static str,
    insert_checkpoint: &'static str,
    streams: &'static str,
    /// Batches by sequence number (`first..=last`), the newest ending before a time, the highest number.
    batches_by_seq: &'static str,
    last_before: &'static str,
    head_seq: &'static str,
    /// Batches overlapping a time range. Bounded above by the range's end plus the stream's
    /// longest batch (the summary's `max_span`), so it is an index range of its size
    /// wherever it lies; a summary that lies only hides rows the reader then fetches by number.
    batches: &'static str,
    checkpoints: &'static str,
    insert_retention: &'static str,
    retentions: &'static str,
    /// The lowest number held of a stream; removing its batches `lo..hi` (`hi` exclusive);
    /// its checkpoints below a number but the newest; its retention records below a number.
    low_seq: &'static str,
    delete_batches: &'static str,
    delete_checkpoints: &'static str,
    delete_retentions: &'static str,
    /// A grant stored unless a newer one of the same owner, stream and peer is; those of a peer.
    upsert_grant: &'static str,
    grants_to: &'static str,
}

const SQLITE: Dialect = Dialect {
    insert_batches: (
        "INSERT INTO batches (device, stream, seq, first_ts, last_ts, count, epoch, hash, sealed) ",
        " ON CONFLICT DO NOTHING",
    ),
    batch_hash: "SELECT hash FROM batches WHERE device = ? AND stream = ? AND seq = ?",
    insert_checkpoint: "INSERT INTO checkpoints (device, stream, seq, sealed) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
    streams: "SELECT device, stream, batches, readings, first_ts, last_ts, head FROM streams WHERE batches > 0 \
              ORDER BY stream, device",
    batches: "SELECT seq, first_ts, last_ts, count, epoch, hash, sealed FROM batches WHERE device = ? AND stream = ? \
              AND last_ts >= ? AND first_ts <= ? AND last_ts <= COALESCE(? + (SELECT MAX(0, MIN(max_span, 4611686018427387903)) \
              FROM streams WHERE device = ? AND stream = ?), ?) ORDER BY seq",
    batches_by_seq: "SELECT seq, first_ts, last_ts, count, epoch, hash, sealed FROM batches \
                     WHERE device = ? AND stream = ? AND seq >= ? AND seq <= ? ORDER BY seq",
    last_before: "SELECT seq, first_ts, last_ts, count, epoch, hash, sealed FROM batches \
                  WHERE device = ? AND stream = ? AND last_ts < ? ORDER BY last_ts DESC, seq DESC LIMIT 1",
    head_seq: "SELECT MAX(seq) AS head FROM batches WHERE device = ? AND stream = ?",
    checkpoints: "SELECT sealed FROM checkpoints WHERE device = ? AND stream = ? ORDER BY seq DESC LIMIT ?",
    insert_retention: "INSERT INTO retention (device, stream, from_seq, sealed) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
    retentions: "SELECT sealed FROM retention WHERE device = ? AND stream = ? ORDER BY from_seq DESC LIMIT 16",
    low_seq: "SELECT MIN(seq) AS lo FROM batches WHERE device = ? AND stream = ?",
    delete_batches: "DELETE FROM batches WHERE device = ? AND stream = ? AND seq >= ? AND seq < ?",
    delete_checkpoints: "DELETE FROM checkpoints WHERE device = ? AND stream = ? AND seq < ? AND seq < ?",
    delete_retentions: "DELETE FROM retention WHERE device = ? AND stream = ? AND from_seq < ?",
    upsert_grant: "INSERT INTO grants (owner, stream, peer, issued, sealed) VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, stream, peer) DO UPDATE SET issued = excluded.issued, sealed = excluded.sealed WHERE excluded.issued > grants.issued",
    grants_to: "SELECT sealed FROM grants WHERE peer = ? ORDER BY owner, stream",
};

const POSTGRES: Dialect = Dialect {
    insert_batches: (
        "INSERT INTO batches (device, stream, seq, first_ts, last_ts, count, epoch, hash, sealed) ",
        " ON CONFLICT DO NOTHING",
    ),
    batch_hash: "SELECT hash FROM batches WHERE device = $1 AND stream = $2 AND seq = $3",
    insert_checkpoint: "INSERT INTO checkpoints (device, stream, seq, sealed) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    streams: "SELECT device, stream, batches, readings, first_ts, last_ts, head FROM streams WHERE batches > 0 \
              ORDER BY stream, device",
    batches: "SELECT seq, first_ts, last_ts, CAST(count AS BIGINT) AS count, epoch, hash, sealed FROM batches \
              WHERE device = $1 AND stream = $2 AND last_ts >= $3 AND first_ts <= $4 AND last_ts <= COALESCE($5 + \
              (SELECT GREATEST(0, LEAST(max_span, 4611686018427387903)) FROM streams WHERE device = $6 AND stream = $7), $8) \
              ORDER BY seq",
    batches_by_seq: "SELECT seq, first_ts, last_ts, CAST(count AS BIGINT) AS count, epoch, hash, sealed FROM batches \
                     WHERE device = $1 AND stream = $2 AND seq >= $3 AND seq <= $4 ORDER BY seq",
    last_before: "SELECT seq, first_ts, last_ts, CAST(count AS BIGINT) AS count, epoch, hash, sealed FROM batches \
                  WHERE device = $1 AND stream = $2 AND last_ts < $3 ORDER BY last_ts DESC, seq DESC LIMIT 1",
    head_seq: "SELECT MAX(seq) AS head FROM batches WHERE device = $1 AND stream = $2",
    checkpoints: "SELECT sealed FROM checkpoints WHERE device = $1 AND stream = $2 ORDER BY seq DESC LIMIT $3",
    insert_retention: "INSERT INTO retention (device, stream, from_seq, sealed) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    retentions: "SELECT sealed FROM retention WHERE device = $1 AND stream = $2 ORDER BY from_seq DESC LIMIT 16",
    low_seq: "SELECT MIN(seq) AS lo FROM batches WHERE device = $1 AND stream = $2",
    delete_batches: "DELETE FROM batches WHERE device = $1 AND stream = $2 AND seq >= $3 AND seq < $4",
    delete_checkpoints: "DELETE FROM checkpoints WHERE device = $1 AND stream = $2 AND seq < $3 AND seq < $4",
    delete_retentions: "DELETE FROM retention WHERE device = $1 AND stream = $2 AND from_seq < $3",
    upsert_grant: "INSERT INTO grants (owner, stream, peer, issued, sealed) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner, stream, peer) DO UPDATE SET issued = EXCLUDED.issued, sealed = EXCLUDED.sealed WHERE EXCLUDED.issued > grants.issued",
    grants_to: "SELECT sealed FROM grants WHERE peer = $1 ORDER BY owner, stream",
};

const MYSQL: Dialect = Dialect {
    insert_batches: (
        "INSERT IGNORE INTO batches (device, stream, seq, first_ts, last_ts, count, epoch, hash, sealed) ",
        "",
    ),
    batch_hash: "SELECT hash FROM batches WHERE device = ? AND stream = ? AND seq = ?",
    insert_checkpoint: "INSERT IGNORE INTO checkpoints (device, stream, seq, sealed) VALUES (?, ?, ?, ?)",
    streams: "SELECT device, stream, batches, readings, first_ts, last_ts, head FROM streams WHERE batches > 0 \
              ORDER BY stream, device",
    batches: "SELECT seq, first_ts, last_ts, CAST(count AS SIGNED) AS count, epoch, hash, sealed FROM batches \
              WHERE device = ? AND stream = ? AND last_ts >= ? AND first_ts <= ? AND last_ts <= COALESCE(? + \
              (SELECT GREATEST(0, LEAST(max_span, 4611686018427387903)) FROM streams WHERE device = ? AND stream = ?), ?) \
              ORDER BY seq",
    batches_by_seq: "SELECT seq, first_ts, last_ts, CAST(count AS SIGNED) AS count, epoch, hash, sealed FROM batches \
                     WHERE device = ? AND stream = ? AND seq >= ? AND seq <= ? ORDER BY seq",
    last_before: "SELECT seq, first_ts, last_ts, CAST(count AS SIGNED) AS count, epoch, hash, sealed FROM batches \
                  WHERE device = ? AND stream = ? AND last_ts < ? ORDER BY last_ts DESC, seq DESC LIMIT 1",
    head_seq: "SELECT MAX(seq) AS head FROM batches WHERE device = ? AND stream = ?",
    checkpoints: "SELECT sealed FROM checkpoints WHERE device = ? AND stream = ? ORDER BY seq DESC LIMIT ?",
    insert_retention: "INSERT IGNORE INTO retention (device, stream, from_seq, sealed) VALUES (?, ?, ?, ?)",
    retentions: "SELECT sealed FROM retention WHERE device = ? AND stream = ? ORDER BY from_seq DESC LIMIT 16",
    low_seq: "SELECT MIN(seq) AS lo FROM batches WHERE device = ? AND stream = ?",
    delete_batches: "DELETE FROM batches WHERE device = ? AND stream = ? AND seq >= ? AND seq < ?",
    delete_checkpoints: "DELETE FROM checkpoints WHERE device = ? AND stream = ? AND seq < ? AND seq < ?",
    delete_retentions: "DELETE FROM retention WHERE device = ? AND stream = ? AND from_seq < ?",
    upsert_grant: "INSERT INTO grants (owner, stream, peer, issued, sealed) VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE sealed = IF(VALUES(issued) > issued, VALUES(sealed), sealed), issued = GREATEST(issued, VALUES(issued))",
    grants_to: "SELECT sealed FROM grants WHERE peer = ? ORDER BY owner, stream",
};

fn device_from(bytes: &[u8]) -> Result<DeviceId> {
    <[u8; 16]>::try_from(bytes).map(DeviceId).map_err(|_| Error::BadRow("device id is not 16 bytes"))
}

fn u64_from(v: i64, what: &'static str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::BadRow(what))
}

fn i64_from(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::BadRow("number above 2^63"))
}

/// A row of a `batches` query, whichever driver returned it.
macro_rules! stored_batch {
    ($r:expr) => {{
        let r = $r;
        Ok::<_, Error>(StoredBatch {
            seq: u64_from(r.try_get("seq")?, "negative sequence number")?,
            first_ts: r.try_get("first_ts")?,
            last_ts: r.try_get("last_ts")?,
            count: r.try_get::<i64, _>("count")?,
            epoch: r.try_get::<i64, _>("epoch")?,
            hash: r.try_get("hash")?,
            sealed: r.try_get("sealed")?,
        })
    }};
}

/// One backend: the same code over each sqlx driver, with its dialect.
macro_rules! backend {
    ($(#[$doc:meta])* $name:ident, $pool:ty, $dialect:expr, $migrations:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
            url: String,
        }

        impl $name {
            pub fn new(pool: $pool, url: &str) -> Self {
                Self { pool, url: redact_url(url) }
            }

            /// The underlying pool (tests edit rows through it, as a hostile operator would).
            pub fn pool(&self) -> &$pool {
                &self.pool
            }
        }

        impl Store for $name {
            async fn migrate(&self) -> Result<()> {
                retry_busy(|| async { Ok(sqlx::migrate!($migrations).run(&self.pool).await?) }).await
            }

            async fn put_batches(&self, input: &[BatchRow]) -> Result<PutReport> {
                let d = &$dialect;
                let mut report = PutReport::default();
                // In key order, so that writers sharing streams take their locks (rows, and the
                // streams summary's) in the same order and never wait on each other in a circle.
                let mut order: Vec<usize> = (0..input.len()).collect();
                order.sort_by(|&a, &b| {
                    let (a, b) = (&input[a], &input[b]);
                    (a.device, &a.stream, a.seq).cmp(&(b.device, &b.stream, b.seq))
                });
                let rows: Vec<&BatchRow> = order.iter().map(|&i| &input[i]).collect();
                let mut tx = self.pool.begin().await?;
                let mut start = 0;
                while start < rows.len() {
                    // As many rows per statement as the parameter and packet limits allow.
                    let (mut end, mut bytes) = (start, 0usize);
                    while end < rows.len() && end - start < ROWS_PER_INSERT && (end == start || bytes < BYTES_PER_INSERT) {
                        bytes += rows[end].sealed.len();
                        end += 1;
                    }
                    let chunk = &rows[start..end];
                    let seqs = chunk.iter().map(|r| i64_from(r.seq)).collect::<Result<Vec<i64>>>()?;
                    let mut q = sqlx::QueryBuilder::new(d.insert_batches.0);
                    q.push_values(chunk.iter().zip(seqs), |mut b, (r, seq)| {
                        b.push_bind(r.device.0.to_vec())
                            .push_bind(r.stream.to_string())
                            .push_bind(seq)
                            .push_bind(r.first_ts)
                            .push_bind(r.last_ts)
                            .push_bind(r.count as i32)
                            .push_bind(i64::from(r.epoch))
                            .push_bind(r.hash.to_vec())
                            .push_bind(r.sealed.clone());
                    });
                    q.push(d.insert_batches.1);
                    let inserted = q.build().execute(&mut *tx).await?.rows_affected() as usize;
                    report.inserted += inserted;
                    if inserted < chunk.len() {
                        // Some were there already: the same batch, or a conflicting one?
                        let mut conflicts = 0;
                        for (i, r) in chunk.iter().enumerate() {
                            let existing: Vec<u8> = sqlx::query(d.batch_hash)
                                .bind(&r.device.0[..])
                                .bind(r.stream.as_str())
                                .bind(i64_from(r.seq)?)
                                .fetch_one(&mut *tx)
                                .await?
                                .try_get(0)?;
                            if existing != r.hash {
                                conflicts += 1;
                                report.conflicts.push(order[start + i]);
                            }
                        }
                        report.already_present += chunk.len() - inserted - conflicts;
                    }
                    start = end;
                }
                tx.commit().await?;
                report.conflicts.sort_unstable();
                Ok(report)
            }

            async fn put_checkpoint(&self, device: DeviceId, stream: &StreamName, seq: u64, sealed: &[u8]) -> Result<()> {
                sqlx::query($dialect.insert_checkpoint)
                    .bind(&device.0[..])
                    .bind(stream.as_str())
                    .bind(i64_from(seq)?)
                    .bind(sealed)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn streams(&self) -> Result<Vec<StreamInfo>> {
                let rows = sqlx::query($dialect.streams).fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| {
                        let device: Vec<u8> = r.try_get("device")?;
                        Ok(StreamInfo {
                            device: device_from(&device)?,
                            stream: r.try_get("stream")?,
                            batches: u64_from(r.try_get("batches")?, "negative count")?,
                            readings: u64_from(r.try_get::<Option<i64>, _>("readings")?.unwrap_or(0), "negative count")?,
                            first_ts: r.try_get("first_ts")?,
                            last_ts: r.try_get("last_ts")?,
                            head_seq: u64_from(r.try_get("head")?, "negative sequence number")?,
                        })
                    })
                    .collect()
            }

            fn batches_stream<'a>(&'a self, device: DeviceId, stream: &'a StreamName, range: TimeRange) -> BoxStream<'a, Result<StoredBatch>> {
                sqlx::query($dialect.batches)
                    .bind(device.0.to_vec())
                    .bind(stream.as_str())
                    .bind(range.from.unwrap_or(i64::MIN))
                    .bind(range.to.unwrap_or(i64::MAX))
                    // No end: no bound (NULL + span is NULL, so the COALESCE gives the maximum).
                    .bind(range.to.map(|to| to.min(SPAN_CAP)))
                    .bind(device.0.to_vec())
                    .bind(stream.as_str())
                    .bind(i64::MAX)
                    .fetch(&self.pool)
                    .map(|r| r.map_err(Error::from).and_then(|r| stored_batch!(&r)))
                    .boxed()
            }

            async fn batches_by_seq(&self, device: DeviceId, stream: &StreamName, first: u64, last: u64) -> Result<Vec<StoredBatch>> {
                let rows = sqlx::query($dialect.batches_by_seq)
                    .bind(&device.0[..])
                    .bind(stream.as_str())
                    .bind(i64::try_from(first).unwrap_or(i64::MAX))
                    .bind(i64::try_from(last).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| stored_batch!(r)).collect()
            }

            async fn last_before(&self, device: DeviceId, stream: &StreamName, ts: i64) -> Result<Option<StoredBatch>> {
                let row = sqlx::query($dialect.last_before)
                    .bind(&device.0[..])
                    .bind(stream.as_str())
                    .bind(ts)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(|r| stored_batch!(r)).transpose()
            }

            async fn head_seq(&self, device: DeviceId, stream: &StreamName) -> Result<Option<u64>> {
                let head: Option<i64> = sqlx::query($dialect.head_seq)
                    .bind(&device.0[..])
                    .bind(stream.as_str())
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("head")?;
                head.map(|h| u64_from(h, "negative sequence number")).transpose()
            }

            async fn checkpoints(&self, device: DeviceId, stream: &StreamName, limit: u32) -> Result<Vec<Vec<u8>>> {
                let rows = sqlx::query($dialect.checkpoints)
                    .bind(&device.0[..])
                    .bind(stream.as_str())
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| Ok(r.try_get::<Vec<u8>, _>("sealed")?)).collect()
            }

            async fn retain(&self, device: DeviceId, stream: &StreamName, from: u64, record: &[u8]) -> Result<u64> {
                let d = &$dialect;
                let from = i64_from(from)?;
                sqlx::query(d.insert_retention)
                    .bind(&device.0[..])
                    .bind(stream.as_str())
                    .bind(from)
                    .bind(record)
                    .execute(&self.pool)
                    .await?;
                let mut removed = 0;
                loop {
                    let lo: Option<i64> = sqlx::query(d.low_seq)
                        .bind(&device.0[..])
                        .bind(stream.as_str())
                        .fetch_one(&self.pool)
                        .await?
                        .try_get("lo")?;
                    let Some(lo) = lo.filter(|&lo| lo < from) else { break };
                    let hi = lo.saturating_add(DELETE_CHUNK).min(from);
                    removed += sqlx::query(d.delete_batches)
                        .bind(&device.0[..])
                        .bind(stream.as_str())
                        .bind(lo)
                        .bind(hi)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                }
                let newest: Option<i64> = sqlx::query(d.checkpoints)
                    .bind(&device.0[..])
                    .bind(stream.as_str())
                    .bind(1i64)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|r| r.try_get::<Vec<u8>, _>("sealed"))
                    .transpose()?
                    .and_then(|b| edgeseal_core::checkpoint::Checkpoint::parse(&b).ok())
                    .and_then(|(c, _)| i64::try_from(c.seq).ok());
                sqlx::query(d.delete_checkpoints)
                    .bind(&device.0[..])
                    .bind(stream.as_str())
                    .bind(from)
                    .bind(newest.unwrap_or(i64::MIN))
                    .execute(&self.pool)
                    .await?;
                sqlx::query(d.delete_retentions)
                    .bind(&device.0[..])
                    .bind(stream.as_str())
                    .bind(from)
                    .execute(&self.pool)
                    .await?;
                Ok(removed)
            }

            async fn put_grant(&self, owner: DeviceId, stream: &StreamName, peer: DeviceId, issued_ms: i64, grant: &[u8]) -> Result<()> {
                sqlx::query($dialect.upsert_grant)
                    .bind(&owner.0[..])
                    .bind(stream.as_str())
                    .bind(&peer.0[..])
                    .bind(issued_ms)
                    .bind(grant)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn grants_to(&self, peer: DeviceId) -> Result<Vec<Vec<u8>>> {
                let rows = sqlx::query($dialect.grants_to).bind(&peer.0[..]).fetch_all(&self.pool).await?;
                rows.iter().map(|r| Ok(r.try_get::<Vec<u8>, _>("sealed")?)).collect()
            }

            async fn retentions(&self, device: DeviceId, stream: &StreamName) -> Result<Vec<Vec<u8>>> {
                let rows = sqlx::query($dialect.retentions)
                    .bind(&device.0[..])
                    .bind(stream.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| Ok(r.try_get::<Vec<u8>, _>("sealed")?)).collect()
            }

            fn url(&self) -> &str {
                &self.url
            }
        }
    };
}

backend!(
    /// SQLite: the zero-setup default, a file in the data directory.
    SqliteStore, sqlx::SqlitePool, SQLITE, "./migrations/sqlite"
);
backend!(
    /// PostgreSQL (and what speaks its protocol: Cloud SQL, CockroachDB, Citus).
    PgStore, sqlx::PgPool, POSTGRES, "./migrations/postgres"
);
backend!(
    /// MySQL and MariaDB (Cloud SQL for MySQL, as the original used).
    MySqlStore, sqlx::MySqlPool, MYSQL, "./migrations/mysql"
);

/// Runs `f`, retrying while SQLite reports the database busy. SQLite returns
/// SQLITE_BUSY at once, without its busy timeout, when a read transaction must
/// become a write transaction while another process writes (as when two
/// processes open the same file and check its schema): waiting and retrying is
/// the documented remedy. Other backends never match.
pub(crate) async fn retry_busy<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut wait = Duration::from_millis(20);
    for _ in 0..12 {
        match f().await {
            Err(e) if is_busy(&e) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
    f().await
}

fn is_busy(e: &Error) -> bool {
    if let Error::Migrate(m) = e
        && m.to_string().contains("_sqlx_migrations")
    {
        // Another process applied the same migration at the same moment; on retry it is seen as applied.
        return true;
    }
    if let Error::Migrate(sqlx::migrate::MigrateError::ExecuteMigration(sqlx::Error::Database(d), _)) = e
        && (d.message().contains("duplicate column") || d.message().contains("already exists"))
    {
        // Another process ran this migration's schema change after we read the list of applied
        // migrations (SQLite has no ADD COLUMN IF NOT EXISTS); on retry it is seen as applied.
        return true;
    }
    let db = match e {
        Error::Query(sqlx::Error::Database(d)) | Error::Unreachable { cause: sqlx::Error::Database(d), .. } => d,
        Error::Migrate(sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(d))) => d,
        _ => return false,
    };
    matches!(db.code().as_deref(), Some("5" | "6" | "517" | "261"))
}

/// How to connect.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Connect on first use instead of now (the agent starts while the database is down).
    pub lazy: bool,
    /// How long to wait for a connection.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions { lazy: false, timeout: Duration::from_secs(5) }
    }
}

/// Any backend, chosen by URL scheme.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
    MySql(MySqlStore),
}

/// Opens a SQLite pool: WAL, and synchronous=FULL so a commit survives power loss (the
/// outbox deletes a batch once the store committed it, so the store must not lose commits).
pub(crate) async fn sqlite_pool(
    url: &str,
    lazy: bool,
    timeout: Duration,
    connections: u32,
) -> Result<sqlx::SqlitePool> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|_| Error::BadUrl(redact_url(url)))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        // Space freed by retention goes back to the file system (takes effect on a new file).
        .auto_vacuum(sqlx::sqlite::SqliteAutoVacuum::Incremental)
        // 1 MiB of page cache per connection (SQLite's default is 2 MiB): this is an
        // append-mostly workload, and the agent must stay small on a 1 GB Pi.
        .pragma("cache_size", "-1024");
    let pool = SqlitePoolOptions::new().max_connections(connections).acquire_timeout(timeout);
    if lazy {
        Ok(pool.connect_lazy_with(opts))
    } else {
        retry_busy(|| async {
            pool.clone()
                .connect_with(opts.clone())
                .await
                .map_err(|cause| Error::Unreachable { url: redact_url(url), cause })
        })
        .await
    }
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e,
            AnyStore::Postgres($s) => $e,
            AnyStore::MySql($s) => $e,
        }
    };
}

impl AnyStore {
    /// Connects to `sqlite://PATH`, `postgres://…` or `mysql://…` (also `mariadb://…`).
    pub async fn connect(url: &str, opts: ConnectOptions) -> Result<AnyStore> {
        if url == THROUGH_BROKER {
            return Err(Error::ThroughBroker);
        }
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        match scheme {
            "sqlite" => {
                Ok(AnyStore::Sqlite(SqliteStore::new(sqlite_pool(url, opts.lazy, opts.timeout, 4).await?, url)))
            }
            "postgres" | "postgresql" => {
                let co = sqlx::postgres::PgConnectOptions::from_str(url).map_err(|_| Error::BadUrl(redact_url(url)))?;
                if !opts.lazy {
                    probe::<sqlx::PgConnection>(&co, url, opts.timeout).await?;
                }
                let po = sqlx::postgres::PgPoolOptions::new().max_connections(4).acquire_timeout(opts.timeout);
                Ok(AnyStore::Postgres(PgStore::new(po.connect_lazy_with(co), url)))
            }
            "mysql" | "mariadb" => {
                let fixed = url.replacen("mariadb:", "mysql:", 1);
                let co =
                    sqlx::mysql::MySqlConnectOptions::from_str(&fixed).map_err(|_| Error::BadUrl(redact_url(url)))?;
                if !opts.lazy {
                    probe::<sqlx::MySqlConnection>(&co, url, opts.timeout).await?;
                }
                let po = sqlx::mysql::MySqlPoolOptions::new().max_connections(4).acquire_timeout(opts.timeout);
                Ok(AnyStore::MySql(MySqlStore::new(po.connect_lazy_with(co), url)))
            }
            _ => Err(Error::BadUrl(redact_url(url))),
        }
    }

    /// Closes the connections (for SQLite this checkpoints the WAL into the database file).
    pub async fn close(&self) {
        dispatch!(self, s => s.pool().close().await)
    }

    /// A short name of the backend.
    pub fn backend(&self) -> &'static str {
        match self {
            AnyStore::Sqlite(_) => "sqlite",
            AnyStore::Postgres(_) => "postgres",
            AnyStore::MySql(_) => "mysql",
        }
    }
}

/// One connection attempt, so an unreachable server is reported with its real cause.
async fn probe<C: sqlx::Connection>(co: &C::Options, url: &str, timeout: Duration) -> Result<()> {
    let unreachable = |cause| Error::Unreachable { url: redact_url(url), cause };
    match tokio::time::timeout(timeout, C::connect_with(co)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(unreachable(e)),
        Err(_) => Err(unreachable(sqlx::Error::PoolTimedOut)),
    }
}

impl Store for AnyStore {
    async fn migrate(&self) -> Result<()> {
        dispatch!(self, s => s.migrate().await)
    }
    async fn put_batches(&self, rows: &[BatchRow]) -> Result<PutReport> {
        dispatch!(self, s => s.put_batches(rows).await)
    }
    async fn put_checkpoint(&self, device: DeviceId, stream: &StreamName, seq: u64, sealed: &[u8]) -> Result<()> {
        dispatch!(self, s => s.put_checkpoint(device, stream, seq, sealed).await)
    }
    async fn streams(&self) -> Result<Vec<StreamInfo>> {
        dispatch!(self, s => s.streams().await)
    }
    fn batches_stream<'a>(
        &'a self,
        device: DeviceId,
        stream: &'a StreamName,
        range: TimeRange,
    ) -> BoxStream<'a, Result<StoredBatch>> {
        dispatch!(self, s => s.batches_stream(device, stream, range))
    }
    async fn retain(&self, device: DeviceId, stream: &StreamName, from: u64, record: &[u8]) -> Result<u64> {
        let removed = dispatch!(self, s => s.retain(device, stream, from, record).await)?;
        if let AnyStore::Sqlite(s) = self
            && removed > 0
        {
            // Give the freed pages back to the file system (auto_vacuum = INCREMENTAL; on a store
            // made before that setting the pages are reused by later batches instead).
            sqlx::query("PRAGMA incremental_vacuum").execute(s.pool()).await?;
        }
        Ok(removed)
    }
    async fn retentions(&self, device: DeviceId, stream: &StreamName) -> Result<Vec<Vec<u8>>> {
        dispatch!(self, s => s.retentions(device, stream).await)
    }
    async fn put_grant(
        &self,
        owner: DeviceId,
        stream: &StreamName,
        peer: DeviceId,
        issued_ms: i64,
        grant: &[u8],
    ) -> Result<()> {
        dispatch!(self, s => s.put_grant(owner, stream, peer, issued_ms, grant).await)
    }
    async fn grants_to(&self, peer: DeviceId) -> Result<Vec<Vec<u8>>> {
        dispatch!(self, s => s.grants_to(peer).await)
    }
    async fn checkpoints(&self, device: DeviceId, stream: &StreamName, limit: u32) -> Result<Vec<Vec<u8>>> {
        dispatch!(self, s => s.checkpoints(device, stream, limit).await)
    }
    async fn batches_by_seq(
        &self,
        device: DeviceId,
        stream: &StreamName,
        first: u64,
        last: u64,
    ) -> Result<Vec<StoredBatch>> {
        dispatch!(self, s => s.batches_by_seq(device, stream, first, last).await)
    }
    async fn last_before(&self, device: DeviceId, stream: &StreamName, ts: i64) -> Result<Option<StoredBatch>> {
        dispatch!(self, s => s.last_before(device, stream, ts).await)
    }
    async fn head_seq(&self, device: DeviceId, stream: &StreamName) -> Result<Option<u64>> {
        dispatch!(self, s => s.head_seq(device, stream).await)
    }
    fn url(&self) -> &str {
        dispatch!(self, s => s.url())
    }
}
