//! `edgeseal bench storage`: the storage pipeline's throughput and footprint
//! on SQLite, with readings of the simulated sensors at 1 Hz.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgeseal_core::chain::Scope;
use edgeseal_core::envelope::{BatchHash, SealParams, seal};
use edgeseal_core::{Readings, ScalarBatch, StreamName};
use edgeseal_sensors::simulated::{Kind, Model};
use edgeseal_store::reader::{open_all, read_stream};
use edgeseal_store::{AnyStore, BatchRow, ConnectOptions, Store, TimeRange};
use serde_json::json;

/// Batches per insert transaction, as the agent's drainer does.
const INSERT_CHUNK: usize = 256;

pub async fn storage(readings: usize, batch: usize, json_out: bool) -> Result<ExitCode> {
    if batch == 0 || readings < 3 {
        bail!("--batch must be above 0 and --readings at least 3");
    }
    let dir = std::env::temp_dir().join(format!("edgeseal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("store.db");
    let _ = std::fs::remove_file(&db);
    let store = AnyStore::connect(&format!("sqlite://{}", db.display()), ConnectOptions::default()).await?;
    store.migrate().await?;
    let identity = edgeseal_agent::datadir::random_identity()?;
    let device = identity.device_id();

    // The readings, generated before timing: three sensors at 1 Hz.
    let per_stream = readings / 3;
    let start_ms = 1_767_225_600_000i64;
    let mut work: Vec<(StreamName, Vec<Readings>)> = Vec::new();
    for (i, kind) in [Kind::Temperature, Kind::Humidity, Kind::AirQuality].into_iter().enumerate() {
        let mut model = Model::new(kind, i as u64 + 1);
        let mut batches = Vec::with_capacity(per_stream.div_ceil(batch));
        let mut t = start_ms;
        for chunk_start in (0..per_stream).step_by(batch) {
            let n = batch.min(per_stream - chunk_start);
            let mut b = ScalarBatch {
                unit: kind.unit().into(),
                ts: Vec::with_capacity(n),
                values: Vec::with_capacity(n),
                labels: vec![],
            };
            for _ in 0..n {
                b.ts.push(t);
                b.values.push(model.sample(t));
                t += 1000;
            }
            batches.push(Readings::Scalar(b));
        }
        work.push((StreamName::new(kind.name()).expect("built-in names are valid"), batches));
    }
    let total = per_stream * 3;

    // Ingest: encode + compress + seal + sign on this thread, inserted in chunks.
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut seal_time = Duration::ZERO;
    let mut scratch = Vec::new();
    let mut chunk: Vec<BatchRow> = Vec::with_capacity(INSERT_CHUNK);
    for (stream, batches) in &work {
        let key = identity.epoch_key(stream, 0);
        let mut prev = BatchHash::default();
        for (seq, r) in batches.iter().enumerate() {
            let s0 = Instant::now();
            let mut salt = [0u8; 16];
            salt[..8].copy_from_slice(&(seq as u64).to_le_bytes());
            let params = SealParams {
                device,
                stream: stream.clone(),
                seq: seq as u64,
                epoch: 0,
                prev,
                salt,
                covers: Vec::new(),
            };
            let sealed = seal(r, &params, &key, Some(&identity), &mut scratch)?;
            seal_time += s0.elapsed();
            prev = sealed.hash;
            chunk.push(BatchRow::from(sealed));
            if chunk.len() == INSERT_CHUNK {
                store.put_batches(&chunk).await?;
                chunk.clear();
            }
        }
    }
    store.put_batches(&chunk).await?;
    let ingest = t0.elapsed();
    let ingest_cores = (cpu_seconds() - cpu0) / ingest.as_secs_f64();

    // Bytes at rest: the database file after a WAL checkpoint.
    if let AnyStore::Sqlite(s) = &store {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(s.pool()).await.context("checkpointing the WAL")?;
    }
    let bytes =
        std::fs::metadata(&db)?.len() + std::fs::metadata(dir.join("store.db-wal")).map(|m| m.len()).unwrap_or(0);

    // Fetch: read, verify (signatures, chain, checkpoints) and open every batch.
    let t1 = Instant::now();
    let mut fetched = 0usize;
    for (stream, _) in &work {
        let read = read_stream(&store, device, stream, TimeRange::default(), None, Scope::WHOLE).await?;
        if !read.audit.is_clean() {
            bail!("the benchmark's own data did not verify: {:?}", read.audit.findings);
        }
        for o in open_all(&read, |e| Some(identity.epoch_key(stream, e).into())) {
            fetched += o.context("a batch was not authentic")??.len();
        }
    }
    let fetch = t1.elapsed();
    if fetched != total {
        bail!("fetched {fetched} readings of {total}");
    }
    if let AnyStore::Sqlite(s) = &store {
        s.pool().close().await;
    }
    let _ = std::fs::remove_dir_all(&dir);

    let ingest_per_s = total as f64 / ingest.as_secs_f64();
    let seal_per_s = total as f64 / seal_time.as_secs_f64();
    let fetch_per_s = total as f64 / fetch.as_secs_f64();
    let bytes_per_reading = bytes as f64 / total as f64;
    if json_out {
        println!(
            "{}",
            json!({
                "ingest_per_s": ingest_per_s.round(),
                "fetch_per_s": fetch_per_s.round(),
                "bytes_per_reading": (bytes_per_reading * 1000.0).round() / 1000.0,
                "seal_per_s": seal_per_s.round(),
                "ingest_cpu_cores": (ingest_cores * 100.0).round() / 100.0,
                "readings": total,
                "batch": batch,
                "fetch_threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
            })
        );
    } else {
        println!("storage benchmark: {total} readings (3 simulated sensors at 1 Hz), batches of {batch}, SQLite");
        println!(
            "  in:      {:>7.2} M readings/s  encode+compress+seal+sign+insert ({:.2} s, {:.2} cores busy)",
            ingest_per_s / 1e6,
            ingest.as_secs_f64(),
            ingest_cores
        );
        println!("           {:>7.2} M readings/s  of that, sealing alone on one thread", seal_per_s / 1e6);
        println!(
            "  out:     {:>7.2} M readings/s  fetch+verify+open ({:.2} s, {} threads)",
            fetch_per_s / 1e6,
            fetch.as_secs_f64(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        println!("  at rest: {bytes_per_reading:>7.3} bytes/reading ({bytes} bytes in the SQLite file)");
    }
    Ok(ExitCode::SUCCESS)
}

/// User + system CPU time of this process, from /proc (0 where unavailable).
pub fn cpu_seconds() -> f64 {
    stat_cpu(&stat_fields("/proc/self/stat"), false)
}

/// The fields of a /proc stat file after the command name (the state is the first); empty if it is gone.
pub fn stat_fields(path: &str) -> Vec<String> {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    stat.rsplit_once(')').map(|(_, a)| a.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
}

/// CPU seconds (user + system) in stat `fields`, with those of reaped children when asked.
pub fn stat_cpu(fields: &[String], with_children: bool) -> f64 {
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 to 17 of the line (utime, stime, cutime, cstime) are 11 to 14 after the command name.
    (ticks(11) + ticks(12) + if with_children { ticks(13) + ticks(14) } else { 0.0 }) / 100.0
}
