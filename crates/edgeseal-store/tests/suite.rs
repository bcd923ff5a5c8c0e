//! The store suite: one test body, run against SQLite, PostgreSQL and MariaDB.
//!
//! PostgreSQL and MariaDB come from `EDGESEAL_TEST_POSTGRES` / `EDGESEAL_TEST_MYSQL`
//! (defaults: the local servers `.ci/run` starts). When one is unreachable its
//! tests skip, unless `EDGESEAL_REQUIRE_SERVICES=1`, where they fail.
#![allow(clippy::unwrap_used)]

use edgeseal_core::chain::{Finding, Head, Scope};
use edgeseal_core::checkpoint::Checkpoint;
use edgeseal_core::envelope::{BatchHash, SealParams, seal};
use edgeseal_core::keys::Identity;
use edgeseal_core::{Reading, Value};
use edgeseal_core::{Readings, ScalarBatch, StreamName};
use edgeseal_store::local::{LocalState, Run, Sealed};
use edgeseal_store::reader::{open_all, read_stream};
use edgeseal_store::{AnyStore, BatchRow, ConnectOptions, Store, TimeRange};

fn random_identity() -> Identity {
    let mut b = [0u8; 96];
    getrandom::fill(&mut b).unwrap();
    Identity::from_secret_bytes(&b)
}

fn batch(seq: u64) -> Readings {
    let base = 1_700_000_000_000 + seq as i64 * 10_000;
    Readings::Scalar(ScalarBatch {
        unit: "°C".into(),
        ts: (0..10).map(|i| base + i * 1000).collect(),
        values: (0..10).map(|i| 20.0 + (seq * 10 + i) as f64 / 10.0).collect(),
        labels: vec![],
    })
}

/// Seals `n` chained batches of `stream` by `id` (signed by `signer`).
fn chain(id: &Identity, signer: &Identity, stream: &str, n: u64) -> (Vec<BatchRow>, Vec<Head>) {
    let stream = StreamName::new(stream).unwrap();
    let key = id.epoch_key(&stream, 0);
    let mut prev = BatchHash::default();
    let (mut rows, mut heads) = (Vec::new(), Vec::new());
    for seq in 0..n {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).unwrap();
        let p = SealParams {
            device: id.device_id(),
            stream: stream.clone(),
            seq,
            epoch: 0,
            prev,
            salt,
            covers: Vec::new(),
        };
        let r = batch(seq);
        // A foreign signer must claim the victim's device: seal unsigned, then sign by hand below.
        let s = seal(&r, &p, &key, (signer.device_id() == id.device_id()).then_some(signer), &mut Vec::new()).unwrap();
        prev = s.hash;
        heads.push(Head { seq, hash: s.hash, ts: s.header.last_ts });
        rows.push(BatchRow::from(s));
    }
    (rows, heads)
}

/// Seals `n` batches of `stream` in rounds of four as the agent does (format
/// v2): the last of each round signed, covering its round and the one before.
fn rounds(id: &Identity, stream: &str, n: u64) -> Vec<BatchRow> {
    let stream = StreamName::new(stream).unwrap();
    let key = id.epoch_key(&stream, 0);
    let (mut prev, mut rows, mut hashes) = (BatchHash::default(), Vec::new(), Vec::<BatchHash>::new());
    for seq in 0..n {
        let signed = seq % 4 == 3 || seq + 1 == n;
        let covers = if signed { hashes[hashes.len().saturating_sub(7)..].to_vec() } else { Vec::new() };
        let p = SealParams {
            device: id.device_id(),
            stream: stream.clone(),
            seq,
            epoch: 0,
            prev,
            salt: [seq as u8; 16],
            covers,
        };
        let s = seal(&batch(seq), &p, &key, signed.then_some(id), &mut Vec::new()).unwrap();
        prev = s.hash;
        hashes.push(s.hash);
        rows.push(BatchRow::from(s));
    }
    rows
}

fn checkpoint(id: &Identity, stream: &str, head: Head) -> Vec<u8> {
    Checkpoint {
        device: id.device_id(),
        stream: StreamName::new(stream).unwrap(),
        seq: head.seq,
        head: head.hash,
        ts: head.ts,
    }
    .sign(id)
    .unwrap()
}

async fn findings(store: &AnyStore, id: &Identity, stream: &str, remembered: Option<Head>) -> Vec<Finding> {
    let s = StreamName::new(stream).unwrap();
    read_stream(store, id.device_id(), &s, TimeRange::default(), remembered, Scope::WHOLE).await.unwrap().audit.findings
}

/// Runs one raw SQL statement the way a hostile operator would.
async fn sql(store: &AnyStore, stmt: &str, binds: &[Bind<'_>]) {
    macro_rules! run {
        ($pool:expr, $stmt:expr) => {{
            let mut q = sqlx::query(sqlx::AssertSqlSafe($stmt.to_string()));
            for b in binds {
                q = match b {
                    Bind::Bytes(v) => q.bind(v.to_vec()),
                    Bind::Int(v) => q.bind(*v),
                };
            }
            q.execute($pool).await.unwrap();
        }};
    }
    match store {
        AnyStore::Sqlite(s) => run!(s.pool(), stmt),
        AnyStore::MySql(s) => run!(s.pool(), stmt),
        AnyStore::Postgres(s) => {
            let mut n = 0;
            let pg: String = stmt
                .chars()
                .map(|c| {
                    if c == '?' {
                        n += 1;
                        format!("${n}")
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            run!(s.pool(), pg)
        }
    }
}

enum Bind<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}

/// One database and one identity of its own for a case.
struct Cx {
    store: AnyStore,
    id: Identity,
}

impl Cx {
    /// Six chained batches of `name` and the checkpoint of the last, stored.
    async fn setup(&self, name: &'static str) -> (Vec<BatchRow>, Vec<Head>) {
        let (rows, heads) = chain(&self.id, &self.id, name, 6);
        self.store.put_batches(&rows).await.unwrap();
        self.store
            .put_checkpoint(self.id.device_id(), &rows[0].stream, 5, &checkpoint(&self.id, name, heads[5]))
            .await
            .unwrap();
        (rows, heads)
    }
}

/// The names a case's code uses: the store, the identity, its device id's bytes, `setup`.
macro_rules! cx {
    ($cx:ident, $store:ident, $id:ident, $dev:ident, $setup:ident) => {
        let $store = &$cx.store;
        let $id = &$cx.id;
        let $dev = &$id.device_id().0[..];
        #[allow(unused_variables)]
        let $setup = |name: &'static str| $cx.setup(name);
    };
}

#[allow(unused_variables)]
async fn round_trip_idempotence_conflicts_and_ranges(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // Round trip, idempotence and conflicts.
    let (rows, heads) = chain(&id, &id, "temperature", 6);
    let r = store.put_batches(&rows).await.unwrap();
    assert_eq!((r.inserted, r.already_present), (6, 0));
    let r = store.put_batches(&rows[2..4]).await.unwrap();
    assert_eq!((r.inserted, r.already_present, r.conflicts.len()), (0, 2, 0));
    let (other, _) = chain(&id, &id, "temperature", 1);
    assert_eq!(store.put_batches(&other).await.unwrap().conflicts, vec![0]);
    // One multi-row insert with a new batch, one already there and a conflict among them.
    let stranger = random_identity();
    let (more, _) = chain(&stranger, &stranger, "temperature", 1);
    let mixed = [rows[1].clone(), other[0].clone(), more[0].clone()];
    let r = store.put_batches(&mixed).await.unwrap();
    assert_eq!((r.inserted, r.already_present, r.conflicts), (1, 1, vec![1]));
    store.put_checkpoint(id.device_id(), &rows[0].stream, 5, &checkpoint(&id, "temperature", heads[5])).await.unwrap();

    let info = store.streams().await.unwrap().into_iter().find(|s| s.device == id.device_id()).unwrap();
    assert_eq!((info.batches, info.readings, info.head_seq), (6, 60, 5));

    let read = read_stream(store, id.device_id(), &rows[0].stream, TimeRange::default(), Some(heads[4]), Scope::WHOLE)
        .await
        .unwrap();
    assert!(read.audit.is_clean(), "{:?}", read.audit.findings);
    assert_eq!(read.audit.head.unwrap().seq, 5);
    let opened = open_all(&read, |e| Some(id.epoch_key(&rows[0].stream, e).into()));
    for (seq, o) in opened.into_iter().enumerate() {
        assert_eq!(o.unwrap().unwrap(), batch(seq as u64));
    }

    // Range queries return overlapping batches only.
    let range = TimeRange { from: Some(rows[2].first_ts + 500), to: Some(rows[3].first_ts) };
    let got = store.batches(id.device_id(), &rows[0].stream, range).await.unwrap();
    assert_eq!(got.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![2, 3]);
}

#[allow(unused_variables)]
async fn a_changed_byte_is_tampered(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // A modified byte.
    let (rows, _) = setup("t-byte").await;
    let mut bad = rows[2].sealed.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    sql(
        &store,
        "UPDATE batches SET sealed = ? WHERE device = ? AND stream = 't-byte' AND seq = 2",
        &[Bind::Bytes(&bad), Bind::Bytes(dev)],
    )
    .await;
    let f = findings(&store, &id, "t-byte", None).await;
    assert!(matches!(f[..], [Finding::Tampered { row_seq: 2, .. }]), "{f:?}");
}

#[allow(unused_variables)]
async fn an_edited_time_column_is_tampered(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // An edited clear column.
    setup("t-meta").await;
    sql(
        &store,
        "UPDATE batches SET last_ts = last_ts + 1 WHERE device = ? AND stream = 't-meta' AND seq = 1",
        &[Bind::Bytes(dev)],
    )
    .await;
    let f = findings(&store, &id, "t-meta", None).await;
    assert!(matches!(f[..], [Finding::Tampered { row_seq: 1, .. }]), "{f:?}");
}

#[allow(unused_variables)]
async fn every_other_edited_clear_column_is_tampered(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // Every other clear column, each on its own stream: the count (what `streams` sums), the
    // key epoch and the hash.
    for (name, set, what) in [
        ("t-count", "count = count + 1", "count"),
        ("t-epoch", "epoch = epoch + 1", "epoch"),
        ("t-hash", "hash = ?", "hash"),
    ] {
        setup(name).await;
        let q = format!("UPDATE batches SET {set} WHERE device = ? AND stream = '{name}' AND seq = 4");
        let other = [7u8; 32];
        let binds: &[Bind<'_>] =
            if set.contains('?') { &[Bind::Bytes(&other), Bind::Bytes(dev)] } else { &[Bind::Bytes(dev)] };
        sql(&store, &q, binds).await;
        let f = findings(&store, &id, name, None).await;
        assert!(
            matches!(f[..], [Finding::Tampered { row_seq: 4, what: w }] if w.contains(what)),
            "an edited {what} column: {f:?}"
        );
    }
}

#[allow(unused_variables)]
async fn a_batch_moved_to_another_stream_is_named(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // A batch moved to another stream.
    setup("t-move-a").await;
    setup("t-move-b").await;
    sql(
        &store,
        "UPDATE batches SET stream = 't-move-b', seq = 6 WHERE device = ? AND stream = 't-move-a' AND seq = 3",
        &[Bind::Bytes(dev)],
    )
    .await;
    assert_eq!(findings(&store, &id, "t-move-a", None).await, vec![Finding::Gap { from: 3, to: 3 }]);
    let f = findings(&store, &id, "t-move-b", None).await;
    assert!(
        matches!(&f[..], [Finding::Moved { row_seq: 6, seq: 3, stream, .. }] if stream.as_str() == "t-move-a"),
        "{f:?}"
    );
}

#[allow(unused_variables)]
async fn a_batch_moved_to_another_device_is_named(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // A batch moved to another device.
    let other = random_identity();
    setup("t-dev").await;
    sql(
        &store,
        "UPDATE batches SET device = ? WHERE device = ? AND stream = 't-dev' AND seq = 5",
        &[Bind::Bytes(&other.device_id().0), Bind::Bytes(dev)],
    )
    .await;
    let f = findings(&store, &other, "t-dev", None).await;
    assert!(matches!(&f[..], [Finding::Moved { row_seq: 5, .. }]), "{f:?}");
}

#[allow(unused_variables)]
async fn a_replayed_batch_is_named(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // A replayed batch.
    let (rows, _) = setup("t-replay").await;
    sql(
        &store,
        "INSERT INTO batches (device, stream, seq, first_ts, last_ts, count, epoch, hash, sealed) VALUES (?, 't-replay', 6, ?, ?, 10, 0, ?, ?)",
        &[Bind::Bytes(dev), Bind::Int(rows[1].first_ts), Bind::Int(rows[1].last_ts), Bind::Bytes(&rows[1].hash), Bind::Bytes(&rows[1].sealed)],
    )
    .await;
    assert_eq!(findings(&store, &id, "t-replay", None).await, vec![Finding::Duplicate { seq: 1, row_seq: 6 }]);
}

#[allow(unused_variables)]
async fn reordered_batches_are_named(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // Reordering.
    let (rows, _) = setup("t-order").await;
    sql(
        &store,
        "UPDATE batches SET sealed = ? WHERE device = ? AND stream = 't-order' AND seq = 2",
        &[Bind::Bytes(&rows[3].sealed), Bind::Bytes(dev)],
    )
    .await;
    sql(
        &store,
        "UPDATE batches SET sealed = ? WHERE device = ? AND stream = 't-order' AND seq = 3",
        &[Bind::Bytes(&rows[2].sealed), Bind::Bytes(dev)],
    )
    .await;
    let f = findings(&store, &id, "t-order", None).await;
    assert!(
        f.iter().all(|x| matches!(x, Finding::Reordered { .. } | Finding::Tampered { .. })) && f.len() == 2,
        "{f:?}"
    );
}

#[allow(unused_variables)]
async fn a_deleted_batch_is_a_gap(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // A gap.
    setup("t-gap").await;
    sql(&store, "DELETE FROM batches WHERE device = ? AND stream = 't-gap' AND seq = 2", &[Bind::Bytes(dev)]).await;
    assert_eq!(findings(&store, &id, "t-gap", None).await, vec![Finding::Gap { from: 2, to: 2 }]);
}

#[allow(unused_variables)]
async fn a_truncated_tail_is_named(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // A truncated tail (the checkpoint for 5 remains).
    setup("t-tail").await;
    sql(&store, "DELETE FROM batches WHERE device = ? AND stream = 't-tail' AND seq >= 4", &[Bind::Bytes(dev)]).await;
    assert_eq!(
        findings(&store, &id, "t-tail", None).await,
        vec![Finding::TruncatedTail { last: Some(3), checkpoint: 5 }]
    );
}

#[allow(unused_variables)]
async fn a_range_is_proven_complete_at_both_ends(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // Time ranges are shown complete at both ends. Batch k holds [base(k), base(k) + 9 s].
    let base = |k: i64| 1_700_000_000_000 + k * 10_000;
    let ranged = |name: &'static str, from: i64, to: Option<i64>| async move {
        let s = StreamName::new(name).unwrap();
        let scope = Scope { from_start: false, to_end: to.is_none() };
        let range = TimeRange { from: Some(from), to };
        read_stream(store, id.device_id(), &s, range, None, scope).await.unwrap()
    };
    setup("t-range").await;
    let read = ranged("t-range", base(2), Some(base(4) + 9_000)).await;
    assert!(read.audit.is_clean(), "{:?}", read.audit.findings);
    assert_eq!(
        read.rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "read with the batch on each side"
    );
    // The first batch of the range deleted: named, not silently left out.
    setup("t-range-start").await;
    sql(&store, "DELETE FROM batches WHERE device = ? AND stream = 't-range-start' AND seq = 2", &[Bind::Bytes(dev)])
        .await;
    let f = ranged("t-range-start", base(2), Some(base(4) + 9_000)).await.audit.findings;
    assert_eq!(f, [Finding::RangeEdgeMissing { seq: 2, at_start: true }]);
    // The last batch of a past range deleted.
    setup("t-range-end").await;
    sql(&store, "DELETE FROM batches WHERE device = ? AND stream = 't-range-end' AND seq = 4", &[Bind::Bytes(dev)])
        .await;
    let f = ranged("t-range-end", base(2), Some(base(4) + 9_000)).await.audit.findings;
    assert_eq!(f, [Finding::RangeEdgeMissing { seq: 4, at_start: false }]);
    // A range after the stream's newest batch (an idle agent's `fetch --from -10m`): clean,
    // while the same range over a truncated tail is still named.
    setup("t-idle").await;
    let read = ranged("t-idle", base(5) + 60_000, None).await;
    assert!(read.audit.is_clean(), "{:?}", read.audit.findings);
    setup("t-idle-cut").await;
    sql(&store, "DELETE FROM batches WHERE device = ? AND stream = 't-idle-cut' AND seq >= 4", &[Bind::Bytes(dev)])
        .await;
    let f = ranged("t-idle-cut", base(5) + 60_000, None).await.audit.findings;
    assert_eq!(f, [Finding::TruncatedTail { last: Some(3), checkpoint: 5 }]);
    // A store that answers a range short (here its summary says no batch lasts any time, so the
    // query stops at the range's end): what overlaps the range is read on by number, to the
    // first batch that does not.
    setup("t-short").await;
    sql(&store, "UPDATE streams SET max_span = -5 WHERE device = ? AND stream = 't-short'", &[Bind::Bytes(dev)]).await;
    let read = ranged("t-short", base(2), Some(base(4) + 4_000)).await;
    assert!(read.audit.is_clean(), "{:?}", read.audit.findings);
    assert_eq!(read.rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
}

#[allow(unused_variables)]
async fn one_deleted_or_replaced_batch_costs_only_itself(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // Damage stays local: one deleted or replaced batch of a round (signed
    // or not) costs only itself; every other batch is still verified.
    let authentic = |read: &edgeseal_store::reader::StreamRead| -> Vec<u64> {
        read.rows.iter().zip(&read.audit.statuses).filter(|(_, s)| s.is_authentic()).map(|(r, _)| r.seq).collect()
    };
    let whole = |name: &'static str| async move {
        let s = StreamName::new(name).unwrap();
        read_stream(store, id.device_id(), &s, TimeRange::default(), None, Scope::WHOLE).await.unwrap()
    };
    for (name, gone) in [("t-local-unsigned", 1), ("t-local-signed", 3)] {
        store.put_batches(&rounds(&id, name, 8)).await.unwrap();
        let stmt = format!("DELETE FROM batches WHERE device = ? AND stream = '{name}' AND seq = ?");
        sql(&store, &stmt, &[Bind::Bytes(dev), Bind::Int(gone)]).await;
        let read = whole(name).await;
        assert_eq!(read.audit.findings, [Finding::Gap { from: gone as u64, to: gone as u64 }], "{name}");
        assert_eq!(authentic(&read), (0..8).filter(|s| *s != gone as u64).collect::<Vec<_>>(), "{name}");
    }
    // A batch replaced by one sealed by a holder of the key (unsigned, chained on, columns consistent).
    let honest = rounds(&id, "t-local-replaced", 8);
    store.put_batches(&honest).await.unwrap();
    let s = StreamName::new("t-local-replaced").unwrap();
    let p = SealParams {
        device: id.device_id(),
        stream: s.clone(),
        seq: 1,
        epoch: 0,
        prev: BatchHash(honest[0].hash),
        salt: [0xee; 16],
        covers: Vec::new(),
    };
    let fake = BatchRow::from(seal(&batch(1), &p, &id.epoch_key(&s, 0), None, &mut Vec::new()).unwrap());
    sql(
        &store,
        "UPDATE batches SET sealed = ?, hash = ? WHERE device = ? AND stream = 't-local-replaced' AND seq = 1",
        &[Bind::Bytes(&fake.sealed), Bind::Bytes(&fake.hash), Bind::Bytes(dev)],
    )
    .await;
    let read = whole("t-local-replaced").await;
    assert_eq!(
        read.audit.findings.iter().map(Finding::kind).collect::<Vec<_>>(),
        ["tampered"],
        "{:?}",
        read.audit.findings
    );
    assert_eq!(authentic(&read), [0, 2, 3, 4, 5, 6, 7]);
}

#[allow(unused_variables)]
async fn a_rolled_back_stream_is_named(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // A rollback of the whole stream to an older state: batches and checkpoints.
    let (_, heads) = setup("t-roll").await;
    sql(&store, "DELETE FROM batches WHERE device = ? AND stream = 't-roll' AND seq >= 3", &[Bind::Bytes(dev)]).await;
    sql(&store, "DELETE FROM checkpoints WHERE device = ? AND stream = 't-roll'", &[Bind::Bytes(dev)]).await;
    let f = findings(&store, &id, "t-roll", Some(heads[5])).await;
    assert!(matches!(f[..], [Finding::Rollback { store_head: Some(2), seen: 5, .. }]), "{f:?}");
}

#[allow(unused_variables)]
async fn a_batch_signed_by_another_identity_is_named(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    // A batch signed by a different identity.
    setup("t-forge").await;
    let forger = random_identity();
    let (forged, _) = chain(&forger, &forger, "t-forge", 7);
    sql(
        &store,
        "INSERT INTO batches (device, stream, seq, first_ts, last_ts, count, epoch, hash, sealed) VALUES (?, 't-forge', 6, ?, ?, 10, 0, ?, ?)",
        &[Bind::Bytes(dev), Bind::Int(forged[6].first_ts), Bind::Int(forged[6].last_ts), Bind::Bytes(&forged[6].hash), Bind::Bytes(&forged[6].sealed)],
    )
    .await;
    let f = findings(&store, &id, "t-forge", None).await;
    assert!(matches!(f[..], [Finding::Moved { row_seq: 6, .. }]), "{f:?}");
}

fn retention_record(id: &Identity, stream: &str, from: u64, head: BatchHash) -> Vec<u8> {
    edgeseal_core::retention::Retention {
        device: id.device_id(),
        stream: StreamName::new(stream).unwrap(),
        from,
        head,
        before: 0,
        ts: 0,
    }
    .sign(id)
    .unwrap()
}

#[allow(unused_variables)]
async fn retention_removes_what_its_record_names_and_nothing_else_goes_unnoticed(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    let (rows, heads) = chain(id, id, "t-keep", 10);
    let s = rows[0].stream.clone();
    store.put_batches(&rows).await.unwrap();
    store.put_checkpoint(id.device_id(), &s, 3, &checkpoint(id, "t-keep", heads[3])).await.unwrap();
    store.put_checkpoint(id.device_id(), &s, 9, &checkpoint(id, "t-keep", heads[9])).await.unwrap();
    let old = retention_record(id, "t-keep", 2, heads[1].hash);
    assert_eq!(store.retain(id.device_id(), &s, 2, &old).await.unwrap(), 2);
    let record = retention_record(id, "t-keep", 6, heads[5].hash);
    assert_eq!(store.retain(id.device_id(), &s, 6, &record).await.unwrap(), 4);
    assert_eq!(store.retain(id.device_id(), &s, 6, &record).await.unwrap(), 0, "idempotent");
    // The stream now starts at 6, the newest record is kept and the older one gone, and so is
    // the checkpoint below the cut; the summary follows.
    assert_eq!(store.retentions(id.device_id(), &s).await.unwrap(), [record.clone()]);
    assert_eq!(store.checkpoints(id.device_id(), &s, 16).await.unwrap().len(), 1);
    let info = store.streams().await.unwrap().into_iter().find(|x| x.device == id.device_id()).unwrap();
    assert_eq!((info.batches, info.readings, info.head_seq), (4, 40, 9));
    let read =
        read_stream(store, id.device_id(), &s, TimeRange::default(), Some(heads[9]), Scope::WHOLE).await.unwrap();
    assert!(read.audit.is_clean(), "{:?}", read.audit.findings);
    assert_eq!((read.audit.start, read.rows.len()), (6, 4));
    // A range that reaches before the cut reads from where the stream starts, with no alarm.
    let range = TimeRange { from: Some(rows[2].first_ts), to: Some(rows[7].last_ts) };
    let read =
        read_stream(store, id.device_id(), &s, range, None, Scope { from_start: false, to_end: false }).await.unwrap();
    assert!(read.audit.is_clean(), "{:?}", read.audit.findings);
    // A batch deleted at or above the cut is still a gap.
    sql(store, "DELETE FROM batches WHERE device = ? AND stream = 't-keep' AND seq = 7", &[Bind::Bytes(dev)]).await;
    assert_eq!(findings(store, id, "t-keep", None).await, [Finding::Gap { from: 7, to: 7 }]);
    // Without the record, what retention removed is a gap as well.
    sql(store, "DELETE FROM retention WHERE device = ?", &[Bind::Bytes(dev)]).await;
    assert_eq!(
        findings(store, id, "t-keep", None).await,
        [Finding::Gap { from: 0, to: 5 }, Finding::Gap { from: 7, to: 7 }]
    );
    // A record the device did not sign removes nothing.
    let stranger = random_identity();
    let forged = edgeseal_core::retention::Retention {
        device: stranger.device_id(),
        stream: s.clone(),
        from: 8,
        head: heads[7].hash,
        before: 0,
        ts: 0,
    }
    .sign(&stranger)
    .unwrap();
    sql(
        store,
        "INSERT INTO retention (device, stream, from_seq, sealed) VALUES (?, 't-keep', 8, ?)",
        &[Bind::Bytes(dev), Bind::Bytes(&forged)],
    )
    .await;
    let kinds: Vec<&str> = findings(store, id, "t-keep", None).await.iter().map(Finding::kind).collect();
    assert_eq!(kinds, ["gap", "gap", "bad-retention"]);
}

#[allow(unused_variables)]
async fn a_long_stream_is_read_row_by_row(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    let rows = rounds(id, "t-long", 3000);
    for part in rows.chunks(500) {
        store.put_batches(part).await.unwrap();
    }
    let s = rows[0].stream.clone();
    let opts = edgeseal_store::reader::ReadOptions {
        range: TimeRange::default(),
        remembered: None,
        scope: Scope::WHOLE,
        bytes: false,
    };
    let (mut handed, mut largest, mut seen) = (0usize, 0usize, Vec::new());
    let audit = edgeseal_store::reader::read_stream_with(store, id.device_id(), &s, opts, |chunk| {
        handed += 1;
        largest = largest.max(chunk.len());
        seen.extend(chunk.iter().map(|(r, st)| (r.seq, st.is_authentic(), r.sealed.is_empty())));
        Ok(())
    })
    .await
    .unwrap();
    assert!(audit.is_clean(), "{:?}", audit.findings);
    assert_eq!((audit.rows, audit.authentic), (3000, 3000));
    assert_eq!(seen, (0..3000).map(|s| (s, true, true)).collect::<Vec<_>>());
    // Handed on as read, a chunk at a time, not held to the end.
    assert!(handed >= 3000 / 512 && largest <= 512 + 4, "{handed} chunks, the largest {largest}");
}

#[allow(unused_variables)]
async fn the_newest_grant_of_an_owner_stream_and_peer_is_kept(cx: Cx) {
    cx!(cx, store, id, dev, setup);
    let (peer, other) = (random_identity(), random_identity());
    let s = StreamName::new("t-grant").unwrap();
    let put = |issued: i64, bytes: &'static [u8]| store.put_grant(id.device_id(), &s, peer.device_id(), issued, bytes);
    put(10, b"ten").await.unwrap();
    put(30, b"thirty").await.unwrap();
    put(20, b"twenty").await.unwrap(); // older than the one there: kept out
    store.put_grant(id.device_id(), &s, other.device_id(), 5, b"other").await.unwrap();
    assert_eq!(store.grants_to(peer.device_id()).await.unwrap(), [b"thirty".to_vec()]);
    assert_eq!(store.grants_to(other.device_id()).await.unwrap(), [b"other".to_vec()]);
}

/// Each case as a test of its own on each database: `sqlite::…`,
/// `postgres::…`, `mariadb::…` (the attacks with SQL against the real database).
macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $case() { super::on(super::Db::Sqlite, super::$case) })*
        }
        mod postgres {
            $(#[test] fn $case() { super::on(super::Db::Postgres, super::$case) })*
        }
        mod mariadb {
            $(#[test] fn $case() { super::on(super::Db::MariaDb, super::$case) })*
        }
    };
}

on_every_store!(
    round_trip_idempotence_conflicts_and_ranges,
    a_changed_byte_is_tampered,
    an_edited_time_column_is_tampered,
    every_other_edited_clear_column_is_tampered,
    a_batch_moved_to_another_stream_is_named,
    a_batch_moved_to_another_device_is_named,
    a_replayed_batch_is_named,
    reordered_batches_are_named,
    a_deleted_batch_is_a_gap,
    a_truncated_tail_is_named,
    a_range_is_proven_complete_at_both_ends,
    one_deleted_or_replaced_batch_costs_only_itself,
    a_rolled_back_stream_is_named,
    a_batch_signed_by_another_identity_is_named,
    retention_removes_what_its_record_names_and_nothing_else_goes_unnoticed,
    a_long_stream_is_read_row_by_row,
    the_newest_grant_of_an_owner_stream_and_peer_is_kept,
);

#[derive(Debug, Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
    MariaDb,
}

/// Runs `case` against a migrated `db` (skipped when a server is absent and not required).
fn on<F>(db: Db, case: fn(Cx) -> F)
where
    F: std::future::Future<Output = ()>,
{
    run(async {
        let store = match db {
            Db::Sqlite => {
                let dir = tempdir("suite");
                AnyStore::connect(&format!("sqlite://{}/store.db", dir.display()), ConnectOptions::default())
                    .await
                    .unwrap()
            }
            Db::Postgres => match server("EDGESEAL_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test").await {
                Some(s) => s,
                None => return,
            },
            Db::MariaDb => match server("EDGESEAL_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test").await {
                Some(s) => s,
                None => return,
            },
        };
        store.migrate().await.unwrap();
        store.migrate().await.expect("migrations are idempotent");
        let cx = Cx { store, id: random_identity() };
        case(cx).await;
    });
}

/// Retention gives SQLite's pages back: a store that keeps a window of a
/// stream stays the same size however long the stream runs.
#[test]
fn an_sqlite_store_under_retention_stops_growing() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempdir("vacuum");
        let file = dir.join("s.db");
        let store =
            AnyStore::connect(&format!("sqlite://{}", file.display()), ConnectOptions::default()).await.unwrap();
        store.migrate().await.unwrap();
        let id = random_identity();
        let rows = rounds(&id, "t", 9000);
        let s = rows[0].stream.clone();
        let size = || async {
            let AnyStore::Sqlite(s) = &store else { unreachable!() };
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(s.pool()).await.unwrap();
            std::fs::metadata(&file).unwrap().len()
        };
        let keep_from = |from: u64| {
            let head = BatchHash(rows[from as usize - 1].hash);
            (from, retention_record(&id, "t", from, head))
        };
        store.put_batches(&rows[..3000]).await.unwrap();
        let full = size().await;
        let (from, record) = keep_from(2900);
        assert_eq!(store.retain(id.device_id(), &s, from, &record).await.unwrap(), 2900);
        let cut = size().await;
        assert!(cut < full / 4, "{cut} bytes after removing 29/30 of {full}");
        for (part, keep) in [(3000..6000, 5900), (6000..9000, 8900)] {
            store.put_batches(&rows[part]).await.unwrap();
            let (from, record) = keep_from(keep);
            store.retain(id.device_id(), &s, from, &record).await.unwrap();
            let again = size().await;
            assert!(again <= cut + cut / 2, "{again} bytes, was {cut}: the file grows");
        }
        let read = read_stream(&store, id.device_id(), &s, TimeRange::default(), None, Scope::WHOLE).await.unwrap();
        assert!(read.audit.is_clean(), "{:?}", read.audit.findings);
        assert_eq!(read.rows.len(), 100);
    });
}

/// A forged batch that claims our device id but carries the forger's signature.
#[test]
fn foreign_signature_is_named_through_a_store() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempdir("foreign");
        let store =
            AnyStore::connect(&format!("sqlite://{}/s.db", dir.display()), ConnectOptions::default()).await.unwrap();
        store.migrate().await.unwrap();
        let id = random_identity();
        let forger = random_identity();
        let (mut rows, _) = chain(&id, &id, "t", 2);
        let (unsigned, _) = chain(&id, &forger, "t", 3);
        // Sign the unsigned batch 2 with the forger's key, as edgeseal's format would.
        let mut bytes = unsigned[2].sealed.clone();
        bytes[4] = edgeseal_core::envelope::FLAG_SIGNED;
        let tmp = [&bytes[..], &[0u8; 96]].concat();
        let hash = edgeseal_core::envelope::parse(&tmp).unwrap().hash();
        let mut msg = b"edgeseal/v1/batch-sig".to_vec();
        msg.extend_from_slice(&hash.0);
        bytes.extend_from_slice(&forger.ed25519_public());
        bytes.extend_from_slice(&forger.sign(&msg));
        let mut forged = unsigned[2].clone();
        forged.sealed = bytes;
        rows.push(forged);
        store.put_batches(&rows).await.unwrap();
        let f = findings(&store, &id, "t", None).await;
        assert!(matches!(f[..], [Finding::Foreign { row_seq: 2, signer }] if signer == forger.device_id()), "{f:?}");
    });
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    let dir = std::env::temp_dir().join(format!("edgeseal-test-{tag}-{}", u64::from_le_bytes(b)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn require_services() -> bool {
    std::env::var("EDGESEAL_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

async fn server(var: &str, default: &str) -> Option<AnyStore> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_string());
    match AnyStore::connect(&url, ConnectOptions::default()).await {
        Ok(s) => Some(s),
        Err(e) if !require_services() => {
            eprintln!("skipping: {e} (set EDGESEAL_REQUIRE_SERVICES=1 to fail instead)");
            None
        }
        Err(e) => panic!("{var}: {e}"),
    }
}

fn run(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(f)
}

#[test]
fn unreachable_database_is_named() {
    run(async {
        let err = AnyStore::connect("postgres://u:hunter2@127.0.0.1:1/x", ConnectOptions::default()).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cannot reach the store at postgres://u:***@127.0.0.1:1/x"), "{text}");
        assert!(!text.contains("hunter2"));
        assert!(err.is_transient());
        let err = AnyStore::connect("ftp://x", ConnectOptions::default()).await.unwrap_err();
        assert!(err.to_string().contains("unsupported store URL"));
    });
}

#[test]
fn local_state_opens_while_others_create_it() {
    // As `up` and `streams` do on a fresh data directory: every opener sees the whole schema.
    run(async {
        let dir = tempdir("local-race");
        for round in 0..10 {
            let path = dir.join(format!("state{round}.db"));
            let opens: Vec<_> = (0..6).map(|_| LocalState::open(&path)).collect();
            for r in futures_util::future::join_all(opens).await {
                let local = r.unwrap();
                local.peers().await.unwrap();
                local.close().await;
            }
        }
    });
}

/// Readings of `stream` at times `ts` (°C, one label among them, and a blob).
fn mixed(stream: &StreamName, ts: std::ops::Range<i64>) -> Vec<Reading> {
    ts.map(|t| Reading {
        stream: stream.clone(),
        ts: t,
        value: match t % 5 {
            4 => Value::Blob { media_type: "image/jpeg".into(), data: vec![t as u8; 7] },
            3 => Value::Scalar { value: t as f64 / 10.0, unit: "°C".into(), label: Some("warm".into()) },
            _ => Value::Scalar { value: t as f64 / 10.0, unit: "°C".into(), label: None },
        },
    })
    .collect()
}

#[test]
fn the_journal_keeps_runs_as_rows_and_gives_back_each_reading_at_its_position() {
    run(async {
        let dir = tempdir("journal");
        let local = LocalState::open(&dir.join("state.db")).await.unwrap();
        let (a, b) = (StreamName::new("a").unwrap(), StreamName::new("b").unwrap());
        let (ra, rb) = (mixed(&a, 0..1000), mixed(&b, 0..10));
        local
            .journal_append(&[
                Run { stream: &a, first_pos: 0, readings: &ra[..600] },
                Run { stream: &b, first_pos: 0, readings: &rb },
            ])
            .await
            .unwrap();
        local.journal_append(&[Run { stream: &a, first_pos: 600, readings: &ra[600..] }]).await.unwrap();
        let url = format!("sqlite://{}", dir.join("state.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM journal").fetch_one(&pool).await.unwrap();
        // One row per run and kind: a's runs alternate scalars and blobs every 5 readings.
        assert!(rows < 1000, "{rows} rows for 1,010 readings");
        let (open, _) = local.journal_open().await.unwrap();
        let got_a: Vec<Reading> = open[0].readings.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(got_a, ra, "every value, unit, label and blob comes back");
        assert!(open[0].readings.iter().enumerate().all(|(i, (p, _))| *p == i as u64));
        assert_eq!((open[0].next_pos, open[1].next_pos), (1000, 10));
        assert_eq!(local.backlog().await.unwrap()["a"].pending_readings, 1000);

        // A damaged row is named and skipped; the others still come back.
        sqlx::query("UPDATE journal SET body = x'00ff' WHERE stream = 'b'").execute(&pool).await.unwrap();
        let (open, damaged) = local.journal_open().await.unwrap();
        assert_eq!(open[0].readings.len(), 1000);
        assert!(damaged.iter().all(|d| d.contains("of b") && d.contains("does not decode")), "{damaged:?}");
        assert!(!damaged.is_empty());
        assert_eq!(open[1].next_pos, 10, "positions are not reused after a damaged row");
        pool.close().await;
    });
}

#[test]
fn readings_journaled_by_an_earlier_version_move_into_the_journal() {
    run(async {
        let dir = tempdir("legacy");
        let path = dir.join("state.db");
        LocalState::open(&path).await.unwrap().close().await;
        let url = format!("sqlite://{}", path.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        for (ts, unit) in [(1i64, "°C"), (2, "°C"), (300_000_000_000_000, "°C"), (3, "%")] {
            sqlx::query("INSERT INTO pending_readings (stream, ts, value, unit) VALUES ('t', ?, 1.5, ?)")
                .bind(ts)
                .bind(unit)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
        let local = LocalState::open(&path).await.unwrap();
        let (open, _) = local.journal_open().await.unwrap();
        let ts: Vec<(u64, i64)> = open[0].readings.iter().map(|(p, r)| (*p, r.ts)).collect();
        assert_eq!(ts, vec![(0, 1), (1, 2), (2, 3)], "in order; the one that can never be sealed is not among them");
        local.close().await;
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pending_readings").fetch_one(&pool).await.unwrap();
        let aside: String = sqlx::query_scalar("SELECT reason FROM set_aside").fetch_one(&pool).await.unwrap();
        assert_eq!(left, 0);
        assert!(aside.contains("time"), "{aside}");
        pool.close().await;
    });
}

#[test]
fn local_state_keeps_everything_across_reopen() {
    run(async {
        let dir = tempdir("local");
        let path = dir.join("state.db");
        let id = random_identity();
        let s = StreamName::new("temperature").unwrap();
        {
            let local = LocalState::open(&path).await.unwrap();
            let pending: Vec<Reading> = (0..5)
                .map(|i| Reading {
                    stream: s.clone(),
                    ts: i,
                    value: Value::Scalar { value: i as f64, unit: "°C".into(), label: None },
                })
                .collect();
            local.journal_append(&[Run { stream: &s, first_pos: 0, readings: &pending }]).await.unwrap();
            let (rows, heads) = chain(&id, &id, "temperature", 1);
            // The first batch seals the journal's readings 0, 1 and 2.
            local.commit_sealed(&[Sealed { row: rows[0].clone(), sealed_pos: 3, covers: Vec::new() }]).await.unwrap();
            let again =
                local.commit_sealed(&[Sealed { row: rows[0].clone(), sealed_pos: 3, covers: Vec::new() }]).await;
            assert!(again.is_err(), "a number is used once");
            local.remember(id.device_id(), &s, heads[0]).await.unwrap();
            local.close().await;
        }
        let local = LocalState::open(&path).await.unwrap();
        let (open, damaged) = local.journal_open().await.unwrap();
        assert!(damaged.is_empty());
        assert_eq!(open.len(), 1);
        let positions: Vec<(u64, i64)> = open[0].readings.iter().map(|(p, r)| (*p, r.ts)).collect();
        assert_eq!(positions, vec![(3, 3), (4, 4)], "what the batch sealed is not journaled any more");
        assert_eq!(open[0].next_pos, 5);
        let st = local.stream_state(&s).await.unwrap();
        assert_eq!(st.next_seq, 1);
        assert_eq!(local.rotate_epoch(&s, 1).await.unwrap(), 1);
        assert_eq!(local.stream_state(&s).await.unwrap().epoch, 1);
        let out = local.outbox(id.device_id(), 10).await.unwrap();
        assert_eq!(out.len(), 1);
        local.outbox_done(out[0].0, &[], &[]).await.unwrap();
        assert!(local.outbox(id.device_id(), 10).await.unwrap().is_empty());
        assert_eq!(local.remembered(id.device_id(), &s).await.unwrap().unwrap().seq, 0);
    });
}

/// `store = "broker"`: what an ingest acknowledges leaves the outbox (its head remembered);
/// what was published long enough ago and never acknowledged is queued for publishing again,
/// once, and what was published recently is not.
#[test]
fn acknowledged_batches_leave_the_outbox_and_the_unacknowledged_are_published_again() {
    run(async {
        let dir = tempdir("handover");
        let mut local = LocalState::open(&dir.join("state.db")).await.unwrap();
        local.enable_publishing();
        let id = random_identity();
        let me = id.device_id();
        let s = StreamName::new("t").unwrap();
        let (rows, _) = chain(&id, &id, "t", 4);
        let sealed: Vec<Sealed> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| Sealed { row: r.clone(), sealed_pos: i as u64 + 1, covers: Vec::new() })
            .collect();
        local.commit_sealed(&sealed).await.unwrap();
        let queue = local.publish_queue(10).await.unwrap();
        assert_eq!(queue.len(), 4);
        local.published(queue[3].0, 1_000).await.unwrap();
        assert_eq!(local.requeue_unacknowledged(500, 10).await.unwrap(), 0, "published at 1000, not before 500");

        assert_eq!(local.outbox_acked(me, &s, 0, 1).await.unwrap(), 2);
        assert_eq!(local.remembered(me, &s).await.unwrap().unwrap().seq, 1);
        assert_eq!(local.outbox_acked(me, &s, 0, 1).await.unwrap(), 0, "an acknowledgement twice removes nothing");
        assert_eq!(local.own_outbox_len().await.unwrap(), 2);

        assert_eq!(local.requeue_unacknowledged(2_000, 10).await.unwrap(), 2);
        assert_eq!(local.requeue_unacknowledged(2_000, 10).await.unwrap(), 0, "already queued");
        let again: Vec<i64> = local.publish_queue(10).await.unwrap().iter().map(|(_, _, b)| b.len() as i64).collect();
        assert_eq!(again, [rows[2].sealed.len() as i64, rows[3].sealed.len() as i64], "batches 2 and 3, in order");
        assert_eq!(local.outbox_acked(me, &s, 2, 3).await.unwrap(), 2);
        assert_eq!(local.remembered(me, &s).await.unwrap().unwrap().seq, 3);
        local.close().await;
    });
}
