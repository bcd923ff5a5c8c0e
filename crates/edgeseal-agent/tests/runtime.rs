//! The runtime's components in process, on a temporary SQLite, with a paused
//! tokio clock: the sealer's cuts by count and by interval, a stream that
//! fails to seal while the others go on, the sealer answering after its input
//! ended, and the drainer through a store outage.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeseal_agent::config::Config;
use edgeseal_agent::datadir;
use edgeseal_agent::runtime::Stats;
use edgeseal_agent::runtime::drainer::Drainer;
use edgeseal_agent::runtime::sealer::{Sealer, Wakers};
use edgeseal_agent::service::{SealerCommand, StoreCell};
use edgeseal_core::keys::Identity;
use edgeseal_core::{DeviceId, Reading, StreamName, Value};
use edgeseal_sensors::batcher::Policy;
use edgeseal_store::local::LocalState;
use edgeseal_store::{Store, TimeRange};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn tempdir(tag: &str) -> std::path::PathBuf {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    let d = std::env::temp_dir().join(format!("edgeseal-rt-{tag}-{:x}", u64::from_le_bytes(b)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn reading(stream: &str, i: i64) -> Reading {
    Reading {
        stream: StreamName::new(stream).unwrap(),
        ts: 1_767_225_600_000 + i * 1000,
        value: Value::Scalar { value: i as f64, unit: "u".into(), label: None },
    }
}

struct Rig {
    dir: std::path::PathBuf,
    local: LocalState,
    identity: Arc<Identity>,
    stats: Arc<Stats>,
    input: mpsc::Sender<Reading>,
    commands: mpsc::Sender<SealerCommand>,
    stop: CancellationToken,
    sealer: tokio::task::JoinHandle<()>,
    wake: Wakers,
    frames: edgeseal_agent::runtime::frames::FrameFeed,
}

/// Runs a query of the test's own on the real clock: while SQLite works on its
/// own threads, a paused runtime would otherwise jump to sqlx's timeouts.
async fn real<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::resume();
    let v = f.await;
    tokio::time::pause();
    v
}

/// A sealer on a fresh state.db; the clock is paused once the databases are open.
async fn rig(tag: &str, policy: Policy) -> Rig {
    let dir = tempdir(tag);
    let local = LocalState::open(&dir.join("state.db")).await.unwrap();
    tokio::time::pause();
    // A paused clock jumps to the next timer whenever every task waits; while
    // SQLite works on its own threads that would be sqlx's acquire timeout.
    // A heartbeat keeps a timer 1 ms ahead, so time moves in small steps.
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let identity = Arc::new(datadir::random_identity().unwrap());
    let stats = Arc::new(Stats::default());
    let (input, rx) = mpsc::channel(64);
    let (commands, crx) = mpsc::channel(4);
    let wake = Wakers { drainer: Arc::new(Notify::new()), publisher: Arc::new(Notify::new()) };
    let (tap, frames) = edgeseal_agent::runtime::frames::channel();
    let sealer = Sealer::new(
        local.clone(),
        identity.clone(),
        policy,
        Default::default(),
        wake.clone(),
        stats.clone(),
        rx,
        crx,
        tap,
    );
    let stop = CancellationToken::new();
    let sealer = tokio::spawn(sealer.run(stop.clone()));
    Rig { dir, local, identity, stats, input, commands, stop, sealer, wake, frames }
}

impl Rig {
    /// (stream, seq) of every batch in the outbox, oldest first.
    async fn outbox(&self) -> Vec<(String, u64)> {
        let rows = real(self.local.outbox(self.identity.device_id(), 1000)).await.unwrap();
        rows.into_iter().map(|(_, r)| (r.stream.to_string(), r.seq)).collect()
    }

    /// Waits (in virtual time) until `cond` holds of the outbox; returns how long that took.
    async fn until(&self, what: &str, cond: impl Fn(&[(String, u64)]) -> bool) -> Duration {
        let start = Instant::now();
        let real = std::time::Instant::now();
        while !cond(&self.outbox().await) {
            assert!(
                real.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}: {:?}",
                self.outbox().await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }

    /// The times of `stream`'s journaled readings not sealed yet.
    async fn journaled(&self, stream: &str) -> Vec<i64> {
        let (open, _) = real(self.local.journal_open()).await.unwrap();
        open.into_iter().filter(|j| j.stream.as_str() == stream).flat_map(|j| j.readings).map(|(_, r)| r.ts).collect()
    }

    /// A drainer from this rig's outbox to the store `cell` connects to, running until the token is cancelled.
    fn drainer(&self, cell: &Arc<StoreCell>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let drainer = Drainer {
            local: self.local.clone(),
            store: cell.clone(),
            identity: self.identity.clone(),
            retry_max: Duration::from_secs(2),
            checkpoint_every: Duration::from_secs(1),
            notify: self.wake.drainer.clone(),
            stats: self.stats.clone(),
        };
        let stop = CancellationToken::new();
        (stop.clone(), tokio::spawn(drainer.run(stop)))
    }

    async fn sql(&self, q: &'static str) {
        let url = format!("sqlite://{}", self.dir.join("state.db").display());
        real(async {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query(q).execute(&pool).await.unwrap();
            pool.close().await;
        })
        .await;
    }
}

#[tokio::test]
async fn the_sealer_cuts_by_count_and_by_interval() {
    let r = rig("cuts", Policy { count: 3, interval_ms: Some(5_000) }).await;
    for i in 0..3 {
        r.input.send(reading("a", i)).await.unwrap();
    }
    // Three readings: cut by count, within the journal's window, long before the interval.
    let took = r.until("a batch cut by count", |o| o.len() == 1).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    // One more: it waits for the interval, and is cut then.
    let sent = Instant::now();
    r.input.send(reading("a", 3)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(r.outbox().await.len(), 1, "cut before its interval");
    r.until("a batch cut by age", |o| o.len() == 2).await;
    let took = sent.elapsed();
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(30), "{took:?}");
    assert_eq!(r.outbox().await, [("a".into(), 0), ("a".into(), 1)]);
    assert_eq!(r.stats.accepted.load(Ordering::Relaxed), 4);
    r.stop.cancel();
    r.sealer.await.unwrap();
}

#[tokio::test]
async fn a_stream_that_fails_to_seal_holds_up_no_other_and_loses_nothing() {
    let r = rig("isolate", Policy { count: 1, interval_ms: None }).await;
    // state.db refuses batches of `a` (as a full disk or a broken file would).
    r.sql("CREATE TRIGGER refuse_a BEFORE INSERT ON outbox WHEN NEW.stream = 'a' BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
        .await;
    r.input.send(reading("a", 0)).await.unwrap();
    r.input.send(reading("b", 0)).await.unwrap();
    r.until("b sealed", |o| o.iter().any(|(s, _)| s == "b")).await;
    r.input.send(reading("a", 1)).await.unwrap();
    r.input.send(reading("b", 1)).await.unwrap();
    r.until("b sealed again", |o| o.iter().filter(|(s, _)| s == "b").count() == 2).await;
    assert!(r.outbox().await.iter().all(|(s, _)| s == "b"));
    assert!(r.stats.seal_failures.load(Ordering::Relaxed) >= 1);
    // a's readings are still accepted (journaled), none lost.
    let pending = r.journaled("a").await;
    assert_eq!(pending.len(), 2, "{pending:?}");
    // The trouble ends: a is tried again by itself, its readings in order.
    r.sql("DROP TRIGGER refuse_a").await;
    r.until("a sealed after the trouble", |o| o.iter().any(|(s, _)| s == "a")).await;
    assert!(r.journaled("a").await.is_empty());
    let a: Vec<u64> = r.outbox().await.into_iter().filter(|(s, _)| s == "a").map(|(_, q)| q).collect();
    assert_eq!(a, [0], "a's two readings are sealed together, in one batch, after the outage");
    let rows = real(r.local.outbox(r.identity.device_id(), 10)).await.unwrap();
    let batch = rows.iter().find(|(_, b)| b.stream.as_str() == "a").unwrap();
    assert_eq!(batch.1.count, 2);
    r.stop.cancel();
    r.sealer.await.unwrap();
}

#[tokio::test]
async fn a_burst_is_journaled_as_runs_in_few_transactions_and_every_reading_is_kept() {
    let r = rig("group", Policy { count: 0, interval_ms: None }).await;
    for i in 0..1000 {
        r.input.send(reading("a", i)).await.unwrap();
    }
    r.input.send(reading("b", 0)).await.unwrap();
    let real_start = std::time::Instant::now();
    while r.stats.accepted.load(Ordering::Relaxed) < 1001 {
        assert!(real_start.elapsed() < Duration::from_secs(20), "the burst was not accepted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a = r.journaled("a").await;
    assert_eq!(a, (0..1000).map(|i| reading("a", i).ts).collect::<Vec<i64>>(), "every reading, in order");
    let url = format!("sqlite://{}", r.dir.join("state.db").display());
    let rows: i64 = real(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM journal").fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    })
    .await;
    // A group per channelful (64 here), a row per stream in it: not a row per reading.
    assert!(rows < 100, "{rows} journal rows for 1,001 readings");
    r.stop.cancel();
    while !r.sealer.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stopping cuts and seals everything open; the journal is empty after it.
    assert!(r.journaled("a").await.is_empty());
    assert_eq!(r.outbox().await.len(), 2);
}

#[tokio::test]
async fn every_accepted_reading_of_a_granted_stream_is_offered_live_at_its_position() {
    let mut r = rig("frames", Policy { count: 1000, interval_ms: None }).await;
    r.frames.streams.replace([StreamName::new("a").unwrap()].into());
    for i in 0..200 {
        r.input.send(reading("a", i)).await.unwrap();
        r.input.send(reading("b", i)).await.unwrap();
    }
    let mut next = 0;
    let real_start = std::time::Instant::now();
    while next < 200 {
        assert!(real_start.elapsed() < Duration::from_secs(20), "only {next} readings were offered live");
        let a = real(r.frames.rx.recv()).await.unwrap();
        assert_eq!(a.stream.as_str(), "a", "b is granted to nobody");
        assert_eq!(a.first_pos, next, "positions follow on");
        let ts: Vec<i64> = a.readings.iter().map(|x| x.ts).collect();
        let want: Vec<i64> = (next..next + ts.len() as u64).map(|i| reading("a", i as i64).ts).collect();
        assert_eq!(ts, want);
        next += ts.len() as u64;
    }
    // Offered at acceptance: nothing was sealed yet (the batch holds 1000).
    assert!(r.outbox().await.is_empty());
    r.stop.cancel();
    r.sealer.await.unwrap();
}

#[tokio::test]
async fn a_batch_interval_of_any_length_is_no_deadline_to_panic_on() {
    let r = rig("forever", Policy { count: 0, interval_ms: Some(i64::MAX) }).await;
    r.input.send(reading("a", 0)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let interval = edgeseal_agent::batching::parse_policy("0", "100000000y").unwrap();
    r.commands.send(SealerCommand::SetPolicy(interval)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(r.outbox().await.is_empty());
    let (tx, rx) = oneshot::channel();
    r.commands.send(SealerCommand::StoreNow(tx)).await.unwrap();
    assert_eq!(rx.await.unwrap().unwrap().readings, 1, "the sealer is alive and holds the reading");
    r.stop.cancel();
    r.sealer.await.unwrap();
}

#[tokio::test]
async fn store_now_and_the_policy_answer_after_the_input_ends() {
    let r = rig("alive", Policy { count: 100, interval_ms: None }).await;
    r.input.send(reading("a", 0)).await.unwrap();
    let Rig { input, commands, stop, sealer, stats, .. } = r;
    drop(input); // `--sensor none`, or the end of standard input
    while stats.accepted.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (tx, rx) = oneshot::channel();
    commands.send(SealerCommand::StoreNow(tx)).await.unwrap();
    let done = rx.await.unwrap().unwrap();
    assert_eq!((done.batches, done.readings), (1, 1));
    commands.send(SealerCommand::SetPolicy(Policy { count: 5, interval_ms: None })).await.unwrap();
    let (tx, rx) = oneshot::channel();
    commands.send(SealerCommand::StoreNow(tx)).await.unwrap();
    assert_eq!(rx.await.unwrap().unwrap().readings, 0);
    stop.cancel();
    sealer.await.unwrap();
}

#[tokio::test]
async fn the_drainer_keeps_the_outbox_through_a_store_outage() {
    let r = rig("drain", Policy { count: 2, interval_ms: None }).await;
    for i in 0..6 {
        r.input.send(reading("a", i)).await.unwrap();
    }
    r.until("three batches sealed", |o| o.len() == 3).await;
    // The store lives in a directory that is not there yet: unreachable.
    let store_dir = r.dir.join("later");
    let mut cfg = Config::new(&r.dir, "t");
    cfg.store_url = format!("sqlite://{}", store_dir.join("store.db").display());
    cfg.store_timeout = Duration::from_secs(2);
    let cell = Arc::new(StoreCell::new(&cfg, true));
    let (drain_stop, drainer) = r.drainer(&cell);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(r.outbox().await.len(), 3, "nothing leaves the outbox while the store is down");
    assert!(r.stats.store_down.load(Ordering::Relaxed));
    // The store comes back: everything is stored once, and the outbox is empty.
    std::fs::create_dir_all(&store_dir).unwrap();
    r.until("the outbox drained", |o| o.is_empty()).await;
    let real_start = std::time::Instant::now();
    while r.stats.store_down.load(Ordering::Relaxed) {
        assert!(real_start.elapsed() < Duration::from_secs(10), "the drainer still says the store is down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let device: DeviceId = r.identity.device_id();
    let stream = StreamName::new("a").unwrap();
    let rows =
        real(async { cell.get().await.unwrap().batches(device, &stream, TimeRange::default()).await }).await.unwrap();
    assert_eq!(rows.iter().map(|b| b.seq).collect::<Vec<_>>(), [0, 1, 2]);
    drain_stop.cancel();
    drainer.await.unwrap();
    r.stop.cancel();
    r.sealer.await.unwrap();
    cell.close().await;
}

#[tokio::test]
async fn retention_cuts_what_was_stored_longer_ago_than_the_stream_keeps() {
    use edgeseal_agent::config::Keep;
    use edgeseal_agent::runtime::retention::Retention;
    use edgeseal_core::chain::Scope;
    let r = rig("retention", Policy { count: 2, interval_ms: None }).await;
    let mut cfg = Config::new(&r.dir, "t");
    cfg.store_url = format!("sqlite://{}", r.dir.join("store.db").display());
    let cell = Arc::new(StoreCell::new(&cfg, false));
    let (drain_stop, drainer) = r.drainer(&cell);
    let feed = |from: i64, to: i64| {
        let input = r.input.clone();
        async move {
            for i in from..to {
                input.send(reading("a", i)).await.unwrap();
                input.send(reading("b", i)).await.unwrap();
            }
        }
    };
    let rr = &r;
    let stored = |n: u64| async move {
        let real_start = std::time::Instant::now();
        while rr.stats.stored.load(Ordering::Relaxed) < n || !rr.outbox().await.is_empty() {
            assert!(real_start.elapsed() < Duration::from_secs(20), "not stored");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    // `a` keeps an hour; `b` keeps everything.
    let keep =
        Keep { default: Some(Duration::from_secs(3600)), per_stream: [(StreamName::new("b").unwrap(), None)].into() };
    let retention = Retention {
        local: r.local.clone(),
        identity: r.identity.clone(),
        keep,
        every: Duration::from_secs(3600),
        store: Some(cell.clone()),
    };
    let t0 = 1_800_000_000_000i64;
    let hour = 3_600_000;
    feed(0, 10).await;
    stored(10).await;
    real(retention.pass(t0)).await; // a stands at batch 4
    feed(10, 20).await;
    stored(20).await;
    real(retention.pass(t0 + hour / 2)).await; // a stands at batch 9
    real(retention.pass(t0 + hour - 1)).await;
    let device = r.identity.device_id();
    let (a, b) = (StreamName::new("a").unwrap(), StreamName::new("b").unwrap());
    let seqs = |s: StreamName| {
        let cell = cell.clone();
        async move {
            let rows = real(async { cell.get().await.unwrap().batches(device, &s, TimeRange::default()).await })
                .await
                .unwrap();
            rows.iter().map(|x| x.seq).collect::<Vec<u64>>()
        }
    };
    assert_eq!(seqs(a.clone()).await, (0..10).collect::<Vec<_>>(), "nothing is an hour old yet");
    // An hour after the first mark: what was stored by then goes, under a signed record.
    real(retention.pass(t0 + hour)).await;
    assert_eq!(seqs(a.clone()).await, (5..10).collect::<Vec<_>>());
    assert_eq!(seqs(b.clone()).await, (0..10).collect::<Vec<_>>(), "b keeps everything");
    let store = real(cell.get()).await.unwrap();
    let read = real(edgeseal_store::reader::read_stream(store, device, &a, TimeRange::default(), None, Scope::WHOLE))
        .await
        .unwrap();
    assert!(read.audit.is_clean(), "{:?}", read.audit.findings);
    assert_eq!(read.audit.start, 5);
    // The stream's newest batch always stays, however old.
    real(retention.pass(t0 + 10 * hour)).await;
    assert_eq!(seqs(a.clone()).await, (5..10).collect::<Vec<_>>());
    // Later passes cut at later marks.
    feed(20, 24).await;
    stored(24).await;
    real(retention.pass(t0 + 11 * hour)).await;
    assert_eq!(seqs(a.clone()).await, [10, 11]);
    assert!(real(r.local.retention_pending()).await.unwrap().is_empty(), "applied");
    drain_stop.cancel();
    drainer.await.unwrap();
    r.stop.cancel();
    r.sealer.await.unwrap();
    cell.close().await;
}
