//! The agent's durable local state, `state.db` in the data directory.
//!
//! Nothing accepted is lost: a reading is journaled before it is acknowledged;
//! sealing a batch moves its readings from the journal to the outbox and
//! advances the stream's sequence number in one transaction; a batch leaves the
//! outbox only after the store acknowledged it. A crash at any point leaves
//! each reading in exactly one of journal, outbox or store.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamState {
    pub next_seq: u64,
    pub head: BatchHash,
    pub epoch: u32,
}

/// Counts of what waits locally, per stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending_readings: u64,
    pub outbox_batches: u64,
}

#[derive(Debug, Clone)]
pub struct LocalState {
    pool: sqlx::SqlitePool,
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
    pub first_epoch: u32,
    pub revoked: bool,
    pub grant: Vec<u8>,
    pub published: bool,
}

/// The outbox row of `row`; `device` is the peer that sealed it, `None` for this agent's own.
fn outbox_insert<'q>(
    row: &'q BatchRow,
    device: Option<&'q [u8]>,
) -> Result<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>> {
    Ok(sqlx::query(
        "INSERT INTO outbox (device, stream, seq, first_ts, last_ts, count, epoch, hash, sealed) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(device)
    .bind(row.stream.as_str())
    .bind(seq_i64(row.seq)?)
    .bind(row.first_ts)
    .bind(row.last_ts)
    .bind(i64::from(row.count))
    .bind(i64::from(row.epoch))
    .bind(&row.hash[..])
    .bind(&row.sealed[..]))
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
        let pool = crate::sqlite_pool(&url, false, Duration::from_secs(10)).await?;
        crate::retry_busy(|| async { Ok(sqlx::migrate!("./migrations/local").run(&pool).await?) }).await?;
        Ok(LocalState { pool, publishing: false })
    }

    /// From now on every sealed batch also joins the publish queue.
    pub fn enable_publishing(&mut self) {
        self.publishing = true;
    }

    /// Journals accepted readings in one transaction; returns their ids.
    pub async fn journal(&self, readings: &[Reading]) -> Result<Vec<i64>> {
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(readings.len());
        for r in readings {
            let q = sqlx::query(
                "INSERT INTO pending_readings (stream, ts, value, unit, label, media_type, blob) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(r.stream.as_str())
            .bind(r.ts);
            let q = match &r.value {
                Value::Scalar { value, unit, label } => {
                    q.bind(*value).bind(unit.as_str()).bind(label.as_deref()).bind(None::<&str>).bind(None::<&[u8]>)
                }
                Value::Blob { media_type, data } => {
                    q.bind(None::<f64>).bind(None::<&str>).bind(None::<&str>).bind(media_type.as_str()).bind(&data[..])
                }
            };
            ids.push(q.execute(&mut *tx).await?.last_insert_rowid());
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Every journaled reading, oldest first, with its id.
    pub async fn pending(&self) -> Result<Vec<(i64, Reading)>> {
        let rows = sqlx::query(
            "SELECT id, stream, ts, value, unit, label, media_type, blob FROM pending_readings ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let stream: String = r.try_get("stream")?;
                let stream = StreamName::new(stream).map_err(|_| Error::BadRow("invalid stream name"))?;
                let value = match r.try_get::<Option<Vec<u8>>, _>("blob")? {
                    Some(data) => Value::Blob {
                        media_type: r.try_get::<Option<String>, _>("media_type")?.unwrap_or_default(),
                        data,
                    },
                    None => Value::Scalar {
                        value: r.try_get::<Option<f64>, _>("value")?.unwrap_or(f64::NAN),
                        unit: r.try_get::<Option<String>, _>("unit")?.unwrap_or_default(),
                        label: r.try_get("label")?,
                    },
                };
                Ok((r.try_get("id")?, Reading { stream, ts: r.try_get("ts")?, value }))
            })
            .collect()
    }

    /// Moves a journaled reading that can never be sealed (`reason`) out of
    /// the journal into `set_aside`, where it is kept but never retried.
    pub async fn set_aside(&self, id: i64, reason: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO set_aside (id, stream, ts, value, unit, label, media_type, blob, reason) \
             SELECT id, stream, ts, value, unit, label, media_type, blob, ? FROM pending_readings WHERE id = ?",
        )
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM pending_readings WHERE id = ?").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn stream_state(&self, stream: &StreamName) -> Result<StreamState> {
        let row = sqlx::query("SELECT next_seq, head, epoch FROM streams WHERE stream = ?")
            .bind(stream.as_str())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(StreamState::default()),
            Some(r) => Ok(StreamState {
                next_seq: u64::try_from(r.try_get::<i64, _>("next_seq")?).map_err(|_| Error::BadRow("negative seq"))?,
                head: hash_from(&r.try_get::<Vec<u8>, _>("head")?)?,
                epoch: u32::try_from(r.try_get::<i64, _>("epoch")?).map_err(|_| Error::BadRow("epoch out of range"))?,
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
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Starts a new key epoch for a stream at `now_ms`; returns it.
    pub async fn rotate_epoch(&self, stream: &StreamName, now_ms: i64) -> Result<u32> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO streams (stream, next_seq, head, epoch) VALUES (?, 0, ?, 0) ON CONFLICT DO NOTHING")
            .bind(stream.as_str())
            .bind(&[0u8; 32][..])
            .execute(&mut *tx)
            .await?;
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

    /// Records a sealed batch: the outbox gains it, the journal loses the
    /// readings it holds (ids ≤ `last_reading_id` of its stream, if any), and
    /// the stream's next number and head advance — atomically. Fails if the
    /// stream has moved on since `row.seq` was chosen.
    pub async fn commit_sealed(&self, row: &BatchRow, last_reading_id: Option<i64>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let stream = row.stream.as_str();
        sqlx::query("INSERT INTO streams (stream, next_seq, head, epoch) VALUES (?, 0, ?, 0) ON CONFLICT DO NOTHING")
            .bind(stream)
            .bind(&[0u8; 32][..])
            .execute(&mut *tx)
            .await?;
        let updated = sqlx::query("UPDATE streams SET next_seq = ?, head = ? WHERE stream = ? AND next_seq = ?")
            .bind(seq_i64(row.seq + 1)?)
            .bind(&row.hash[..])
            .bind(stream)
            .bind(seq_i64(row.seq)?)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            return Err(Error::BadRow("the stream's sequence number moved on while sealing"));
        }
        outbox_insert(row, None)?.execute(&mut *tx).await?;
        if self.publishing {
            sqlx::query("INSERT INTO publish_queue (stream, seq, sealed) VALUES (?, ?, ?)")
                .bind(stream)
                .bind(seq_i64(row.seq)?)
                .bind(&row.sealed[..])
                .execute(&mut *tx)
                .await?;
        }
        if let Some(id) = last_reading_id {
            sqlx::query("DELETE FROM pending_readings WHERE stream = ? AND id <= ?")
                .bind(stream)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The oldest `limit` batches waiting for the store, with their outbox ids.
    pub async fn outbox(&self, device: DeviceId, limit: u32) -> Result<Vec<(i64, BatchRow)>> {
        let rows = sqlx::query(
            "SELECT id, device, stream, seq, first_ts, last_ts, count, epoch, hash, sealed FROM outbox ORDER BY id LIMIT ?",
        )
        .bind(i64::from(limit))
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

    /// Removes stored batches from the outbox; batches the store refused go to `rejected`.
    pub async fn outbox_done(&self, stored: &[i64], rejected: &[(i64, String)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (id, reason) in rejected {
            sqlx::query("INSERT INTO rejected (stream, seq, reason, sealed) SELECT stream, seq, ?, sealed FROM outbox WHERE id = ?")
                .bind(reason.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        for id in stored.iter().chain(rejected.iter().map(|(id, _)| id)) {
            sqlx::query("DELETE FROM outbox WHERE id = ?").bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What waits locally, per stream.
    pub async fn backlog(&self) -> Result<HashMap<String, Backlog>> {
        let mut out: HashMap<String, Backlog> = HashMap::new();
        for r in sqlx::query("SELECT stream, COUNT(*) AS n FROM pending_readings GROUP BY stream")
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
        sqlx::query(
            "INSERT INTO seen_heads (device, stream, seq, hash, ts) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (device, stream) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, ts = excluded.ts \
             WHERE excluded.seq > seen_heads.seq",
        )
        .bind(&device.0[..])
        .bind(stream.as_str())
        .bind(seq_i64(head.seq)?)
        .bind(&head.hash.0[..])
        .bind(head.ts)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queues a batch received from a peer for the store (the outbox keeps it until the store acked).
    pub async fn commit_received(&self, row: &BatchRow) -> Result<()> {
        outbox_insert(row, Some(&row.device.0[..]))?.execute(&self.pool).await?;
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

    /// Removes published batches from the queue.
    pub async fn published(&self, ids: &[i64]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("DELETE FROM publish_queue WHERE id = ?").bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A setting changed while the agent ran (see [`LocalState::put_setting`]).
    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = ?").bind(key).fetch_optional(&self.pool).await?)
    }

    pub async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
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
            .execute(&self.pool)
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
            "INSERT OR REPLACE INTO grants_out (peer, stream, from_ms, first_epoch, revoked, grant, published) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&g.peer.0[..])
        .bind(g.stream.as_str())
        .bind(g.from_ms)
        .bind(i64::from(g.first_epoch))
        .bind(g.revoked)
        .bind(&g.grant[..])
        .bind(g.published)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every grant given, by stream then peer.
    pub async fn grants_out(&self) -> Result<Vec<GrantOut>> {
        let rows = sqlx::query(
            "SELECT peer, stream, from_ms, first_epoch, revoked, grant, published FROM grants_out ORDER BY stream, peer",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GrantOut {
                    peer: device_from(r.try_get("peer")?)?,
                    stream: stream_from(r)?,
                    from_ms: r.try_get("from_ms")?,
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
            .execute(&self.pool)
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
            .execute(&self.pool)
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
        self.pool.close().await;
    }
}
