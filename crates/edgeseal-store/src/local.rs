//! The agent's durable local state, `state.db` in the data directory.
//!
//! Nothing accepted is lost: a reading is journaled before it is acknowledged
//! (readings arrive in groups, each group one transaction and one row per
//! stream, its readings encoded as a batch body is); sealing a round of
//! batches moves their readings from the journal to the outbox and advances
//! each stream's sequence number in one transaction; a batch leaves the outbox
//! only after the store acknowledged it. A crash at any point leaves each
//! reading in exactly one of journal, outbox or store.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use edgeseal_core::chain::Head;
use edgeseal_core::envelope::BatchHash;
use edgeseal_core::keys::PublicIdentity;
use edgeseal_core::{DeviceId, Reading, StreamName, Value};
use sqlx::Row as _;

use crate::{BatchRow, Error, Result};

/// Per-stream sealing state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamState {
    pub next_seq: u64,
    pub head: BatchHash,
    pub epoch: u32,
    /// The hashes of the batches just before `next_seq` (oldest first) that
    /// the stream's next signed batch vouches for.
    pub covers: Vec<BatchHash>,
}

/// Counts of what waits locally, per stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending_readings: u64,
    pub outbox_batches: u64,
}

/// A stream's journaled readings not sealed yet, as [`LocalState::journal_open`] finds them.
#[derive(Debug, Clone, PartialEq)]
pub struct Journaled {
    pub stream: StreamName,
    /// Each reading with its position among the stream's accepted readings.
    pub readings: Vec<(u64, Reading)>,
    /// The position the stream's next accepted reading takes.
    pub next_pos: u64,
}

/// Readings of one stream to journal: `readings` take positions `first_pos..`.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub stream: &'a StreamName,
    pub first_pos: u64,
    pub readings: &'a [Reading],
}

/// A sealed batch of this agent, with the position up to which (exclusive)
/// its stream's journaled readings are sealed once it is.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub row: BatchRow,
    pub sealed_pos: u64,
    /// For a stream's last batch of a round: what its next signed batch is to cover.
    pub covers: Vec<BatchHash>,
}

/// Rows per multi-row INSERT (9 columns each, well under SQLite's 32,766 parameters).
const ROWS_PER_INSERT: usize = 500;

#[derive(Debug, Clone)]
pub struct LocalState {
    /// For reading.
    pool: sqlx::SqlitePool,
    /// The one connection that writes.
    writer: sqlx::SqlitePool,
    publishing: bool,
}

/// A paired peer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    pub device: DeviceId,
    pub name: String,
    pub public: PublicIdentity,
    pub paired_ms: i64,
}

/// A grant this agent gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantOut {
    pub peer: DeviceId,
    pub stream: StreamName,
    pub from_ms: i64,
    /// The end of the granted time (`None`: no end).
    pub to_ms: Option<i64>,
    pub first_epoch: u32,
    pub revoked: bool,
    pub grant: Vec<u8>,
    pub published: bool,
}

/// Journals `runs` in `tx`: one row per run and kind or unit (the batch body codec).
async fn append_runs(tx: &mut sqlx::SqliteConnection, runs: &[Run<'_>]) -> Result<()> {
    let mut body = Vec::new();
    for run in runs {
        let mut start = 0usize;
        for (group, last) in edgeseal_core::reading::into_batches(run.readings) {
            body.clear();
            edgeseal_core::codec::encode(&group, &mut body)
                .map_err(|_| Error::BadRow("a reading the journal cannot encode (check it first)"))?;
            sqlx::query("INSERT INTO journal (stream, first_pos, count, body) VALUES (?, ?, ?, ?)")
                .bind(run.stream.as_str())
                .bind(seq_i64(run.first_pos + start as u64)?)
                .bind(i64::try_from(group.len()).map_err(|_| Error::BadRow("run too long"))?)
                .bind(&body[..])
                .execute(&mut *tx)
                .await?;
            start = last + 1;
        }
    }
    Ok(())
}

/// Remembers `head` of `device`'s `stream` if it is higher than what is remembered.
fn remember_query<'q>(
    device: DeviceId,
    stream: &'q StreamName,
    head: &Head,
) -> Result<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>> {
    Ok(sqlx::query(
        "INSERT INTO seen_heads (device, stream, seq, hash, ts) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (device, stream) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, ts = excluded.ts \
         WHERE excluded.seq > seen_heads.seq",
    )
    .bind(device.0.to_vec())
    .bind(stream.as_str())
    .bind(seq_i64(head.seq)?)
    .bind(head.hash.0.to_vec())
    .bind(head.ts))
}

/// Inserts `rows` after `head` (`INSERT INTO table (columns) `), bound by `bind`, in as few
/// statements as the parameter limit allows.
async fn insert_many<'r, T: 'r>(
    tx: &mut sqlx::SqliteConnection,
    head: &str,
    rows: &'r [T],
    bind: impl Fn(sqlx::query_builder::Separated<'_, sqlx::Sqlite, &'static str>, &'r T) -> Result<()>,
) -> Result<()> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(head);
        let mut failed = Ok(());
        q.push_values(chunk, |b, r| {
            if let Err(e) = bind(b, r) {
                failed = Err(e);
            }
        });
        failed?;
        q.build().execute(&mut *tx).await?;
    }
    Ok(())
}

/// The head of a multi-row insert into the outbox (rows bound by [`push_outbox_row`]).
const OUTBOX_INSERT: &str = "INSERT INTO outbox (device, stream, seq, first_ts, last_ts, count, epoch, hash, sealed) ";

/// Binds the outbox row of `row`; `device` is the peer that sealed it, `None` for this agent's own.
fn push_outbox_row(
    mut b: sqlx::query_builder::Separated<'_, sqlx::Sqlite, &'static str>,
    row: &BatchRow,
    device: Option<&[u8]>,
) -> Result<()> {
    b.push_bind(device.map(<[u8]>::to_vec))
        .push_bind(row.stream.to_string())
        .push_bind(seq_i64(row.seq)?)
        .push_bind(row.first_ts)
        .push_bind(row.last_ts)
        .push_bind(i64::from(row.count))
        .push_bind(i64::from(row.epoch))
        .push_bind(&row.hash[..])
        .push_bind(&row.sealed[..]);
    Ok(())
}

/// Creates `stream`'s state (sequence 0, no head, epoch 0) unless it exists.
async fn ensure_stream(tx: &mut sqlx::SqliteConnection, stream: &StreamName) -> Result<()> {
    sqlx::query("INSERT INTO streams (stream, next_seq, head, epoch) VALUES (?, 0, ?, 0) ON CONFLICT DO NOTHING")
        .bind(stream.as_str())
        .bind(&[0u8; 32][..])
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn seq_i64(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| Error::BadRow("sequence number above 2^63"))
}

fn stream_from(r: &sqlx::sqlite::SqliteRow) -> Result<StreamName> {
    StreamName::new(r.try_get::<String, _>("stream")?).map_err(|_| Error::BadRow("invalid stream name"))
}

fn device_from(v: Vec<u8>) -> Result<DeviceId> {
    v.try_into().map(DeviceId).map_err(|_| Error::BadRow("device id is not 16 bytes"))
}

fn hash_from(v: &[u8]) -> Result<BatchHash> {
    <[u8; 32]>::try_from(v).map(BatchHash).map_err(|_| Error::BadRow("hash is not 32 bytes"))
}

impl LocalState {
    /// Opens (creating if needed) the state database at `path`.
    pub async fn open(path: &Path) -> Result<LocalState> {
        let url = format!("sqlite://{}", path.display());
        // One connection writes, so writers queue here in order instead of
        // sleeping in SQLite's busy handler; readers (WAL) never wait for it.
        let writer = crate::sqlite_pool(&url, false, Duration::from_secs(30), 1).await?;
        crate::retry_busy(|| async { Ok(sqlx::migrate!("./migrations/local").run(&writer).await?) }).await?;
        let pool = crate::sqlite_pool(&url, false, Duration::from_secs(10), 3).await?;
        let local = LocalState { pool, writer, publishing: false };
        let (moved, set_aside) = local.move_legacy_readings().await?;
        if moved + set_aside > 0 {
            tracing::info!(
                "moved {moved} readings journaled by an earlier version into the journal{}",
                match set_aside {
                    0 => String::new(),
                    n => format!("; {n} that can never be sealed were set aside in state.db (table set_aside)"),
                }
            );
        }
        Ok(local)
    }

    /// From now on every sealed batch also joins the publish queue.
    pub fn enable_publishing(&mut self) {
        self.publishing = true;
    }

    /// Journals accepted readings (one transaction, one row per run and kind or unit).
    pub async fn journal_append(&self, runs: &[Run<'_>]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        append_runs(&mut tx, runs).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every stream's journaled readings that are not sealed yet, oldest first,
    /// and the position its next reading takes (every stream this agent has
    /// journaled or sealed). A journal row that does not decode (a damaged
    /// state.db) is skipped and named in the second list.
    pub async fn journal_open(&self) -> Result<(Vec<Journaled>, Vec<String>)> {
        let mut out: std::collections::BTreeMap<String, Journaled> = std::collections::BTreeMap::new();
        let mut sealed: HashMap<String, u64> = HashMap::new();
        for r in sqlx::query("SELECT stream, sealed_pos FROM streams").fetch_all(&self.pool).await? {
            let stream = stream_from(&r)?;
            let pos =
                u64::try_from(r.try_get::<i64, _>("sealed_pos")?).map_err(|_| Error::BadRow("negative position"))?;
            sealed.insert(stream.to_string(), pos);
            out.insert(stream.to_string(), Journaled { stream, readings: Vec::new(), next_pos: pos });
        }
        let rows = sqlx::query("SELECT id, stream, first_pos, count, body FROM journal ORDER BY stream, first_pos")
            .fetch_all(&self.pool)
            .await?;
        let mut damaged = Vec::new();
        for r in rows {
            let stream = stream_from(&r)?;
            let first =
                u64::try_from(r.try_get::<i64, _>("first_pos")?).map_err(|_| Error::BadRow("negative position"))?;
            let count = u64::try_from(r.try_get::<i64, _>("count")?).map_err(|_| Error::BadRow("negative count"))?;
            let j = out.entry(stream.to_string()).or_insert_with(|| Journaled {
                stream: stream.clone(),
                readings: Vec::new(),
                next_pos: 0,
            });
            j.next_pos = j.next_pos.max(first + count);
            let body: Vec<u8> = r.try_get("body")?;
            let readings = match edgeseal_core::codec::decode(&body) {
                Ok(b) if b.len() as u64 == count => b.to_readings(&stream),
                _ => {
                    let id: i64 = r.try_get("id")?;
                    damaged.push(format!("journal row {id} ({count} readings of {stream}) does not decode"));
                    continue;
                }
            };
            let sealed = sealed.get(stream.as_str()).copied().unwrap_or(0);
            let positioned = (first..).zip(readings).filter(|(pos, _)| *pos >= sealed);
            j.readings.extend(positioned);
        }
        Ok((out.into_values().collect(), damaged))
    }

    /// Moves readings journaled by versions before the journal of runs
    /// (`pending_readings`, a row per reading) into it, oldest first, in one
    /// transaction; those that could never be sealed go to `set_aside` with
    /// the reason instead. Returns (moved, set aside).
    async fn move_legacy_readings(&self) -> Result<(usize, usize)> {
        let rows = sqlx::query(
            "SELECT id, stream, ts, value, unit, label, media_type, blob FROM pending_readings ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok((0, 0));
        }
        let mut by_stream: std::collections::BTreeMap<StreamName, Vec<Reading>> = std::collections::BTreeMap::new();
        let mut refused: Vec<(i64, String)> = Vec::new();
        for r in &rows {
            let stream = stream_from(r)?;
            let value = match r.try_get::<Option<Vec<u8>>, _>("blob")? {
                Some(data) => {
                    Value::Blob { media_type: r.try_get::<Option<String>, _>("media_type")?.unwrap_or_default(), data }
                }
                None => Value::Scalar {
                    value: r.try_get::<Option<f64>, _>("value")?.unwrap_or(f64::NAN),
                    unit: r.try_get::<Option<String>, _>("unit")?.unwrap_or_default(),
                    label: r.try_get("label")?,
                },
            };
            let reading = Reading { stream: stream.clone(), ts: r.try_get("ts")?, value };
            match reading.check() {
                Ok(()) => by_stream.entry(stream).or_default().push(reading),
                Err(why) => refused.push((r.try_get("id")?, why.to_string())),
            }
        }
        let (open, _) = self.journal_open().await?;
        let next = |s: &StreamName| open.iter().find(|j| &j.stream == s).map_or(0, |j| j.next_pos);
        let runs: Vec<Run> =
            by_stream.iter().map(|(s, rs)| Run { stream: s, first_pos: next(s), readings: rs }).collect();
        let mut tx = self.writer.begin().await?;
        append_runs(&mut tx, &runs).await?;
        for (id, reason) in &refused {
            sqlx::query(
                "INSERT INTO set_aside (id, stream, ts, value, unit, label, media_type, blob, reason) \
                 SELECT id, stream, ts, value, unit, label, media_type, blob, ? FROM pending_readings WHERE id = ?",
            )
            .bind(reason)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM pending_readings").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok((rows.len() - refused.len(), refused.len()))
    }

    pub async fn stream_state(&self, stream: &StreamName) -> Result<StreamState> {
        let row = sqlx::query("SELECT next_seq, head, epoch, covers FROM streams WHERE stream = ?")
            .bind(stream.as_str())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(StreamState::default()),
            Some(r) => Ok(StreamState {
                next_seq: u64::try_from(r.try_get::<i64, _>("next_seq")?).map_err(|_| Error::BadRow("negative seq"))?,
                head: hash_from(&r.try_get::<Vec<u8>, _>("head")?)?,
                epoch: u32::try_from(r.try_get::<i64, _>("epoch")?).map_err(|_| Error::BadRow("epoch out of range"))?,
                covers: r
                    .try_get::<Option<Vec<u8>>, _>("covers")?
                    .unwrap_or_default()
                    .chunks_exact(32)
                    .map(hash_from)
                    .collect::<Result<_>>()?,
            }),
        }
    }

    /// All streams this agent has sealed, with their state.
    pub async fn stream_states(&self) -> Result<Vec<(StreamName, StreamState)>> {
        let rows = sqlx::query("SELECT stream FROM streams ORDER BY stream").fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let name = stream_from(&r)?;
            let st = self.stream_state(&name).await?;
            out.push((name, st));
        }
        Ok(out)
    }

    /// Records where a stream stands when this agent has no record of it (its
    /// state.db was lost): the next batch follows `head`. Returns false if the
    /// stream was already known.
    pub async fn seed_stream(&self, stream: &StreamName, next_seq: u64, head: BatchHash, epoch: u32) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO streams (stream, next_seq, head, epoch) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(stream.as_str())
        .bind(seq_i64(next_seq)?)
        .bind(&head.0[..])
        .bind(i64::from(epoch))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Starts a new key epoch for a stream at `now_ms`; returns it.
    pub async fn rotate_epoch(&self, stream: &StreamName, now_ms: i64) -> Result<u32> {
        let mut tx = self.writer.begin().await?;
        ensure_stream(&mut tx, stream).await?;
        let epoch: i64 = sqlx::query("UPDATE streams SET epoch = epoch + 1 WHERE stream = ? RETURNING epoch")
            .bind(stream.as_str())
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        sqlx::query("INSERT OR REPLACE INTO epochs (stream, epoch, started_ms) VALUES (?, ?, ?)")
            .bind(stream.as_str())
            .bind(epoch)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        u32::try_from(epoch).map_err(|_| Error::BadRow("epoch out of range"))
    }

    /// The epoch that was current at `at_ms` (0 if the stream had no rotation by then).
    pub async fn epoch_at(&self, stream: &StreamName, at_ms: i64) -> Result<u32> {
        let row = sqlx::query("SELECT MAX(epoch) FROM epochs WHERE stream = ? AND started_ms <= ?")
            .bind(stream.as_str())
            .bind(at_ms)
            .fetch_one(&self.pool)
            .await?;
        let e: Option<i64> = row.try_get(0)?;
        u32::try_from(e.unwrap_or(0)).map_err(|_| Error::BadRow("epoch out of range"))
    }

    /// Records a round of this agent's sealed batches, in one transaction: the
    /// outbox (and the publish queue, when publishing) gains them, each
    /// stream's next number, head and sealed position advance, and journal
    /// rows now wholly sealed go. A stream's batches must follow each other
    /// and the stream's recorded state: fails, recording nothing, if the
    /// stream has moved on since they were numbered.
    pub async fn commit_sealed(&self, batches: &[Sealed]) -> Result<()> {
        if batches.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await?;
        // Per stream: its first and last batch of the round.
        let mut streams: Vec<(&StreamName, &Sealed, &Sealed)> = Vec::new();
        for b in batches {
            match streams.iter_mut().find(|(s, ..)| **s == b.row.stream) {
                Some((_, _, last)) => {
                    if b.row.seq != last.row.seq + 1 {
                        return Err(Error::BadRow("a stream's batches of one round are not consecutive"));
                    }
                    *last = b;
                }
                None => streams.push((&b.row.stream, b, b)),
            }
        }
        for (stream, first, last) in &streams {
            ensure_stream(&mut tx, stream).await?;
            let updated = sqlx::query(
                "UPDATE streams SET next_seq = ?, head = ?, sealed_pos = MAX(sealed_pos, ?), covers = ? \
                 WHERE stream = ? AND next_seq = ?",
            )
            .bind(seq_i64(last.row.seq + 1)?)
            .bind(&last.row.hash[..])
            .bind(seq_i64(last.sealed_pos)?)
            .bind(last.covers.iter().flat_map(|h| h.0).collect::<Vec<u8>>())
            .bind(stream.as_str())
            .bind(seq_i64(first.row.seq)?)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() != 1 {
                return Err(Error::BadRow("the stream's sequence number moved on while sealing"));
            }
            sqlx::query("DELETE FROM journal WHERE stream = ? AND first_pos + count <= ?")
                .bind(stream.as_str())
                .bind(seq_i64(last.sealed_pos)?)
                .execute(&mut *tx)
                .await?;
        }
        insert_many(&mut tx, OUTBOX_INSERT, batches, |b, s| push_outbox_row(b, &s.row, None)).await?;
        if self.publishing {
            insert_many(&mut tx, "INSERT INTO publish_queue (stream, seq, sealed) ", batches, |mut b, s| {
                b.push_bind(s.row.stream.to_string()).push_bind(seq_i64(s.row.seq)?).push_bind(&s.row.sealed[..]);
                Ok(())
            })
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The oldest `limit` batches waiting for the store, with their outbox ids.
    pub async fn outbox(&self, device: DeviceId, limit: u32) -> Result<Vec<(i64, BatchRow)>> {
        self.outbox_upto(device, limit, u64::MAX).await
    }

    /// The oldest batches waiting for the store: at most `limit`, and no more
    /// after the first that reach `max_bytes` of sealed bytes together.
    pub async fn outbox_upto(&self, device: DeviceId, limit: u32, max_bytes: u64) -> Result<Vec<(i64, BatchRow)>> {
        let rows = sqlx::query(
            "SELECT id, device, stream, seq, first_ts, last_ts, count, epoch, hash, sealed FROM \
             (SELECT *, SUM(LENGTH(sealed)) OVER (ORDER BY id) - LENGTH(sealed) AS before FROM \
              (SELECT * FROM outbox ORDER BY id LIMIT ?)) \
             WHERE before < ? ORDER BY id",
        )
        .bind(i64::from(limit))
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let hash: Vec<u8> = r.try_get("hash")?;
                let device = match r.try_get::<Option<Vec<u8>>, _>("device")? {
                    None => device,
                    Some(d) => device_from(d)?,
                };
                Ok((
                    r.try_get("id")?,
                    BatchRow {
                        device,
                        stream: stream_from(r)?,
                        seq: u64::try_from(r.try_get::<i64, _>("seq")?).map_err(|_| Error::BadRow("negative seq"))?,
                        first_ts: r.try_get("first_ts")?,
                        last_ts: r.try_get("last_ts")?,
                        count: u32::try_from(r.try_get::<i64, _>("count")?).map_err(|_| Error::BadRow("count"))?,
                        epoch: u32::try_from(r.try_get::<i64, _>("epoch")?).map_err(|_| Error::BadRow("epoch"))?,
                        hash: hash_from(&hash)?.0,
                        sealed: r.try_get("sealed")?,
                    },
                ))
            })
            .collect()
    }

    /// Removes every outbox batch up to id `through` (the oldest ones, as
    /// [`LocalState::outbox`] gave them): stored, or refused by the store and
    /// kept in `rejected` with the reason; and remembers the stored `heads`
    /// (as [`LocalState::remember`]), in one transaction.
    pub async fn outbox_done(
        &self,
        through: i64,
        rejected: &[(i64, String)],
        heads: &[(DeviceId, &StreamName, Head)],
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for (device, stream, head) in heads {
            remember_query(*device, stream, head)?.execute(&mut *tx).await?;
        }
        for (id, reason) in rejected {
            sqlx::query("INSERT INTO rejected (stream, seq, reason, sealed) SELECT stream, seq, ?, sealed FROM outbox WHERE id = ?")
                .bind(reason.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM outbox WHERE id <= ?").bind(through).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes this agent's own outbox batches `from..=to` of `stream`, which an
    /// ingest process says it stored, and remembers the highest of them as the
    /// stream's head, in one transaction. How many it removed.
    pub async fn outbox_acked(&self, me: DeviceId, stream: &StreamName, from: u64, to: u64) -> Result<u64> {
        let (from, to) = (seq_i64(from)?, seq_i64(to)?);
        let mut tx = self.writer.begin().await?;
        let top = sqlx::query(
            "SELECT seq, hash, last_ts FROM outbox WHERE device IS NULL AND stream = ? AND seq BETWEEN ? AND ? \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(stream.as_str())
        .bind(from)
        .bind(to)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(top) = top else { return Ok(0) };
        let head = Head {
            seq: u64::try_from(top.try_get::<i64, _>("seq")?).map_err(|_| Error::BadRow("negative seq"))?,
            hash: hash_from(&top.try_get::<Vec<u8>, _>("hash")?)?,
            ts: top.try_get("last_ts")?,
        };
        remember_query(me, stream, &head)?.execute(&mut *tx).await?;
        let gone = sqlx::query("DELETE FROM outbox WHERE device IS NULL AND stream = ? AND seq BETWEEN ? AND ?")
            .bind(stream.as_str())
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }

    /// Queues for publishing again the oldest `limit` of this agent's outbox
    /// batches that no ingest has acknowledged although they were sent before
    /// `sent_before_ms` (or never), and that are not queued already: the broker
    /// or an ingest lost them. How many it queued.
    pub async fn requeue_unacknowledged(&self, sent_before_ms: i64, limit: u32) -> Result<u64> {
        Ok(sqlx::query(
            "INSERT INTO publish_queue (stream, seq, sealed) SELECT o.stream, o.seq, o.sealed FROM outbox o \
             WHERE o.device IS NULL AND (o.sent_ms IS NULL OR o.sent_ms < ?) AND NOT EXISTS \
               (SELECT 1 FROM publish_queue q WHERE q.stream = o.stream AND q.seq = o.seq) \
             ORDER BY o.id LIMIT ?",
        )
        .bind(sent_before_ms)
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    /// How many of this agent's own batches wait in the outbox.
    pub async fn own_outbox_len(&self) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE device IS NULL").fetch_one(&self.pool).await?;
        Ok(n as u64)
    }

    /// What waits locally, per stream.
    pub async fn backlog(&self) -> Result<HashMap<String, Backlog>> {
        let mut out: HashMap<String, Backlog> = HashMap::new();
        for r in sqlx::query(
            "SELECT j.stream AS stream, MAX(j.first_pos + j.count) - MAX(COALESCE(s.sealed_pos, 0), MIN(j.first_pos)) AS n \
             FROM journal j LEFT JOIN streams s ON s.stream = j.stream GROUP BY j.stream",
        )
            .fetch_all(&self.pool)
            .await?
        {
            out.entry(r.try_get("stream")?).or_default().pending_readings = r.try_get::<i64, _>("n")? as u64;
        }
        for r in sqlx::query("SELECT stream, COUNT(*) AS n FROM outbox GROUP BY stream").fetch_all(&self.pool).await? {
            out.entry(r.try_get("stream")?).or_default().outbox_batches = r.try_get::<i64, _>("n")? as u64;
        }
        Ok(out)
    }

    /// The highest head remembered for a stream.
    pub async fn remembered(&self, device: DeviceId, stream: &StreamName) -> Result<Option<Head>> {
        let row = sqlx::query("SELECT seq, hash, ts FROM seen_heads WHERE device = ? AND stream = ?")
            .bind(&device.0[..])
            .bind(stream.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Head {
                seq: u64::try_from(r.try_get::<i64, _>("seq")?).map_err(|_| Error::BadRow("negative seq"))?,
                hash: hash_from(&r.try_get::<Vec<u8>, _>("hash")?)?,
                ts: r.try_get("ts")?,
            })
        })
        .transpose()
    }

    /// Streams of `device` with a remembered head.
    pub async fn remembered_streams(&self, device: DeviceId) -> Result<Vec<StreamName>> {
        let rows = sqlx::query("SELECT stream FROM seen_heads WHERE device = ? ORDER BY stream")
            .bind(&device.0[..])
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stream_from).collect()
    }

    /// Remembers `head` if it is higher than what is remembered.
    pub async fn remember(&self, device: DeviceId, stream: &StreamName, head: Head) -> Result<()> {
        remember_query(device, stream, &head)?.execute(&self.writer).await?;
        Ok(())
    }

    /// Every hole recorded: (device, stream, from, to, the hash the batch after it names).
    pub async fn holes(&self) -> Result<Vec<(DeviceId, StreamName, u64, u64, BatchHash)>> {
        let rows =
            sqlx::query("SELECT device, stream, from_seq, to_seq, top FROM holes ORDER BY device, stream, from_seq")
                .fetch_all(&self.pool)
                .await?;
        let seq = |v: i64| u64::try_from(v).map_err(|_| Error::BadRow("negative seq"));
        rows.iter()
            .map(|r| {
                let device = DeviceId(
                    r.try_get::<Vec<u8>, _>("device")?
                        .try_into()
                        .map_err(|_| Error::BadRow("device id is not 16 bytes"))?,
                );
                Ok((
                    device,
                    stream_from(r)?,
                    seq(r.try_get("from_seq")?)?,
                    seq(r.try_get("to_seq")?)?,
                    hash_from(&r.try_get::<Vec<u8>, _>("top")?)?,
                ))
            })
            .collect()
    }

    /// Records (or, with `to < from`, forgets) the hole of `device`'s `stream` that starts at `from`.
    pub async fn set_hole(
        &self,
        device: DeviceId,
        stream: &StreamName,
        from: u64,
        to: u64,
        top: BatchHash,
    ) -> Result<()> {
        let i = |v: u64| i64::try_from(v).map_err(|_| Error::BadRow("seq above 2^63"));
        if to < from {
            sqlx::query("DELETE FROM holes WHERE device = ? AND stream = ? AND from_seq = ?")
                .bind(&device.0[..])
                .bind(stream.as_str())
                .bind(i(from)?)
                .execute(&self.writer)
                .await?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO holes (device, stream, from_seq, to_seq, top) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (device, stream, from_seq) DO UPDATE SET to_seq = excluded.to_seq, top = excluded.top",
        )
        .bind(&device.0[..])
        .bind(stream.as_str())
        .bind(i(from)?)
        .bind(i(to)?)
        .bind(&top.0[..])
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The newest checkpoint this agent wrote or verified of a stream.
    pub async fn checkpoint_seen(&self, device: DeviceId, stream: &StreamName) -> Result<Option<u64>> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM seen_checkpoints WHERE device = ? AND stream = ?")
            .bind(&device.0[..])
            .bind(stream.as_str())
            .fetch_optional(&self.pool)
            .await?;
        seq.map(|s| u64::try_from(s).map_err(|_| Error::BadRow("negative seq"))).transpose()
    }

    /// Remembers a checkpoint of batch `seq` if it is newer than the one remembered.
    pub async fn saw_checkpoint(&self, device: DeviceId, stream: &StreamName, seq: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO seen_checkpoints (device, stream, seq) VALUES (?, ?, ?) \
             ON CONFLICT (device, stream) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        )
        .bind(&device.0[..])
        .bind(stream.as_str())
        .bind(i64::try_from(seq).map_err(|_| Error::BadRow("seq above 2^63"))?)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Notes that `stream`'s newest stored batch is `seq` (with `hash`) at
    /// `at_ms`, unless the newest mark is of that batch already.
    pub async fn retention_mark(&self, stream: &StreamName, seq: u64, hash: BatchHash, at_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO retention_marks (stream, seq, hash, at_ms) SELECT ?, ?, ?, ? \
             WHERE NOT EXISTS (SELECT 1 FROM retention_marks WHERE stream = ? AND seq >= ?)",
        )
        .bind(stream.as_str())
        .bind(seq_i64(seq)?)
        .bind(&hash.0[..])
        .bind(at_ms)
        .bind(stream.as_str())
        .bind(seq_i64(seq)?)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The newest mark of `stream` made at or before `at_ms`: every batch up to it was stored by then.
    pub async fn retention_mark_before(&self, stream: &StreamName, at_ms: i64) -> Result<Option<(u64, BatchHash)>> {
        let row = sqlx::query(
            "SELECT seq, hash FROM retention_marks WHERE stream = ? AND at_ms <= ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(stream.as_str())
        .bind(at_ms)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let seq = u64::try_from(r.try_get::<i64, _>("seq")?).map_err(|_| Error::BadRow("negative seq"))?;
            Ok((seq, hash_from(&r.try_get::<Vec<u8>, _>("hash")?)?))
        })
        .transpose()
    }

    /// Keeps `record` as `stream`'s retention record, to apply (it starts the
    /// stream at `from`), and forgets the marks it used up.
    pub async fn set_retention(&self, stream: &StreamName, from: u64, record: &[u8]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("INSERT OR REPLACE INTO retention_records (stream, from_seq, record, applied) VALUES (?, ?, ?, 0)")
            .bind(stream.as_str())
            .bind(seq_i64(from)?)
            .bind(record)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM retention_marks WHERE stream = ? AND seq < ?")
            .bind(stream.as_str())
            .bind(seq_i64(from)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Retention records not applied yet: (stream, from, record).
    pub async fn retention_pending(&self) -> Result<Vec<(StreamName, u64, Vec<u8>)>> {
        let rows =
            sqlx::query("SELECT stream, from_seq, record FROM retention_records WHERE applied = 0 ORDER BY stream")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                let from =
                    u64::try_from(r.try_get::<i64, _>("from_seq")?).map_err(|_| Error::BadRow("negative seq"))?;
                Ok((stream_from(r)?, from, r.try_get("record")?))
            })
            .collect()
    }

    /// Where `stream` starts by its newest retention record (applied or not).
    pub async fn retention_from(&self, stream: &StreamName) -> Result<Option<u64>> {
        let from: Option<i64> = sqlx::query_scalar("SELECT from_seq FROM retention_records WHERE stream = ?")
            .bind(stream.as_str())
            .fetch_optional(&self.pool)
            .await?;
        from.map(|f| u64::try_from(f).map_err(|_| Error::BadRow("negative seq"))).transpose()
    }

    /// The store (or an ingest) applied `stream`'s record that starts it at `from`.
    pub async fn retention_applied(&self, stream: &StreamName, from: u64) -> Result<()> {
        sqlx::query("UPDATE retention_records SET applied = 1 WHERE stream = ? AND from_seq = ?")
            .bind(stream.as_str())
            .bind(seq_i64(from)?)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Queues a batch received from a peer for the store (the outbox keeps it until the store acked).
    pub async fn commit_received(&self, row: &BatchRow) -> Result<()> {
        let mut conn = self.writer.acquire().await?;
        insert_many(&mut conn, OUTBOX_INSERT, std::slice::from_ref(row), |b, r| {
            push_outbox_row(b, r, Some(&r.device.0[..]))
        })
        .await?;
        Ok(())
    }

    /// The oldest `limit` batches waiting to be published: (queue id, stream, sealed bytes).
    pub async fn publish_queue(&self, limit: u32) -> Result<Vec<(i64, StreamName, Vec<u8>)>> {
        let rows = sqlx::query("SELECT id, stream, sealed FROM publish_queue ORDER BY id LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, stream_from(r)?, r.try_get("sealed")?))).collect()
    }

    /// Removes published batches from the queue: every one up to id `through`
    /// (the oldest ones, as [`LocalState::publish_queue`] gave them), noting
    /// in the outbox when this agent's own were sent (`at_ms`).
    pub async fn published(&self, through: i64, at_ms: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "UPDATE outbox SET sent_ms = ? WHERE device IS NULL AND (stream, seq) IN              (SELECT stream, seq FROM publish_queue WHERE id <= ?)",
        )
        .bind(at_ms)
        .bind(through)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM publish_queue WHERE id <= ?").bind(through).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = ?").bind(key).fetch_optional(&self.pool).await?)
    }

    pub async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)")
            .bind(key)
            .bind(value)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records a paired peer (replacing an earlier pairing with the same device).
    pub async fn add_peer(&self, peer: &PeerRow) -> Result<()> {
        sqlx::query("INSERT OR REPLACE INTO peers (device, name, ed25519, x25519, paired_ms) VALUES (?, ?, ?, ?, ?)")
            .bind(&peer.device.0[..])
            .bind(&peer.name)
            .bind(&peer.public.ed25519[..])
            .bind(&peer.public.x25519[..])
            .bind(peer.paired_ms)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Every paired peer, oldest pairing first.
    pub async fn peers(&self) -> Result<Vec<PeerRow>> {
        let rows = sqlx::query("SELECT device, name, ed25519, x25519, paired_ms FROM peers ORDER BY paired_ms, name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let key = |c: &str| -> Result<[u8; 32]> {
                    r.try_get::<Vec<u8>, _>(c)?.try_into().map_err(|_| Error::BadRow("peer key is not 32 bytes"))
                };
                let public = PublicIdentity { ed25519: key("ed25519")?, x25519: key("x25519")? };
                let device = public.device_id();
                if r.try_get::<Vec<u8>, _>("device")? != device.0 {
                    return Err(Error::BadRow("a peer's device id does not match its key"));
                }
                Ok(PeerRow { device, name: r.try_get("name")?, public, paired_ms: r.try_get("paired_ms")? })
            })
            .collect()
    }

    /// Stores the latest grant given to a peer for a stream (not yet published).
    pub async fn put_grant_out(&self, g: &GrantOut) -> Result<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO grants_out (peer, stream, from_ms, to_ms, first_epoch, revoked, grant, published) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&g.peer.0[..])
        .bind(g.stream.as_str())
        .bind(g.from_ms)
        .bind(g.to_ms)
        .bind(i64::from(g.first_epoch))
        .bind(g.revoked)
        .bind(&g.grant[..])
        .bind(g.published)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Every grant given, by stream then peer.
    pub async fn grants_out(&self) -> Result<Vec<GrantOut>> {
        let rows = sqlx::query(
            "SELECT peer, stream, from_ms, to_ms, first_epoch, revoked, grant, published FROM grants_out \
             ORDER BY stream, peer",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GrantOut {
                    peer: device_from(r.try_get("peer")?)?,
                    stream: stream_from(r)?,
                    from_ms: r.try_get("from_ms")?,
                    to_ms: r.try_get("to_ms")?,
                    first_epoch: u32::try_from(r.try_get::<i64, _>("first_epoch")?)
                        .map_err(|_| Error::BadRow("epoch out of range"))?,
                    revoked: r.try_get("revoked")?,
                    grant: r.try_get("grant")?,
                    published: r.try_get("published")?,
                })
            })
            .collect()
    }

    /// Marks a grant as published, unless it was replaced meanwhile.
    pub async fn grant_published(&self, peer: DeviceId, stream: &StreamName, grant: &[u8]) -> Result<()> {
        sqlx::query("UPDATE grants_out SET published = 1 WHERE peer = ? AND stream = ? AND grant = ?")
            .bind(&peer.0[..])
            .bind(stream.as_str())
            .bind(grant)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Grants given and not yet written to the store: (peer, stream, grant).
    pub async fn grants_unstored(&self) -> Result<Vec<(DeviceId, StreamName, Vec<u8>)>> {
        let rows = sqlx::query("SELECT peer, stream, grant FROM grants_out WHERE stored = 0 ORDER BY stream, peer")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((device_from(r.try_get("peer")?)?, stream_from(r)?, r.try_get("grant")?))).collect()
    }

    /// Marks a grant as written to the store, unless it was replaced meanwhile.
    pub async fn grant_stored(&self, peer: DeviceId, stream: &StreamName, grant: &[u8]) -> Result<()> {
        sqlx::query("UPDATE grants_out SET stored = 1 WHERE peer = ? AND stream = ? AND grant = ?")
            .bind(&peer.0[..])
            .bind(stream.as_str())
            .bind(grant)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Keeps a verified grant received from `owner`: a newer grant with keys
    /// replaces the stored one; a revocation only marks it (the keys it held
    /// still open what was sealed before). Returns false for a stale grant.
    pub async fn put_grant_in(
        &self,
        owner: DeviceId,
        stream: &StreamName,
        issued_ms: i64,
        grant: &[u8],
        revocation: bool,
    ) -> Result<bool> {
        let q = if revocation {
            "UPDATE grants_in SET revoked_ms = ?3 WHERE owner = ?1 AND stream = ?2 AND issued_ms < ?3"
        } else {
            "INSERT INTO grants_in (owner, stream, issued_ms, grant, revoked_ms) VALUES (?1, ?2, ?3, ?4, NULL) \
             ON CONFLICT (owner, stream) DO UPDATE SET issued_ms = excluded.issued_ms, grant = excluded.grant, \
             revoked_ms = NULL WHERE excluded.issued_ms > grants_in.issued_ms \
             AND excluded.issued_ms > COALESCE(grants_in.revoked_ms, 0)"
        };
        let done = sqlx::query(q)
            .bind(&owner.0[..])
            .bind(stream.as_str())
            .bind(issued_ms)
            .bind(grant)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every grant received: (owner, stream, grant bytes, revoked at).
    pub async fn grants_in(&self) -> Result<Vec<(DeviceId, StreamName, Vec<u8>, Option<i64>)>> {
        let rows = sqlx::query("SELECT owner, stream, grant, revoked_ms FROM grants_in ORDER BY owner, stream")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((device_from(r.try_get("owner")?)?, stream_from(r)?, r.try_get("grant")?, r.try_get("revoked_ms")?))
            })
            .collect()
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}
