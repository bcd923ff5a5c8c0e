//! `edgeseal bench fleet`: a fleet through a real broker into a real store.
//! N simulated devices run in this process, each with its own identity, MQTT
//! connection and chain: every `--every` each seals a batch of `--batch`
//! temperature readings and publishes it, as a device with `store = "broker"`
//! does. K `edgeseal ingest` processes share them into the store and tell
//! each device what they stored; as a real device does, each publishes again
//! what waits unacknowledged for [`RESEND_AFTER`] (an ingest worker killed
//! after writing a batch and before telling its device). After `--for`, the
//! devices stop and wait for the last acknowledgements. Then `verify --all-devices` audits the
//! store. With `--kill`, ingest worker 0 is killed with SIGKILL halfway
//! through and started again under its name.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgeseal_agent::config::Config;
use edgeseal_agent::ingest::Stored;
use edgeseal_agent::share::Topics;
use edgeseal_core::envelope::{BatchHash, SealParams, seal};
use edgeseal_core::keys::Identity;
use edgeseal_core::{Readings, ScalarBatch, StreamName};
use edgeseal_mqtt::link::{Link, Protocol};
use edgeseal_sensors::simulated::{Kind, Model};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::bench::{stat_cpu, stat_fields};

/// How long a simulated device waits for "stored" before it publishes a batch again
/// (`outbox.resend_after` of a real one, shortened to fit a run).
const RESEND_AFTER: Duration = Duration::from_secs(15);

/// What every device measured: seal-to-stored latencies, and batches sent and acknowledged.
#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    sent: u64,
    acked: u64,
    /// Acknowledged within the measured window (after the warm-up, before the stop).
    acked_in_window: u64,
}

#[allow(clippy::too_many_arguments)]
pub async fn fleet(
    cfg: &Config,
    devices: usize,
    workers: usize,
    run_for: Duration,
    batch: usize,
    every: Duration,
    kill: bool,
    json_out: bool,
) -> Result<ExitCode> {
    let Some(broker) = cfg.mqtt.broker.clone() else {
        bail!("bench fleet needs a broker: --broker mqtt://HOST");
    };
    if cfg.stores_through_broker() || devices == 0 || workers == 0 || batch == 0 {
        bail!("bench fleet needs a database (--store postgres://…), and --devices, --workers and --batch above 0");
    }
    let dir = std::env::temp_dir().join(format!("edgeseal-bench-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let me = std::env::current_exe()?;
    let version = match cfg.mqtt.protocol {
        Protocol::V311 => "3.1.1",
        Protocol::V5 => "5",
    };
    let child = |args: &[&str]| {
        let mut c = Command::new(&me);
        c.args(["--broker", &broker.to_string(), "--store", &cfg.store_url, "--data-dir"])
            .arg(dir.join("auditor"))
            .args(args)
            .env("EDGESEAL_MQTT__VERSION", version)
            .env("EDGESEAL_WEB__LISTEN", "")
            .env("EDGESEAL_BROKER__LISTEN", "")
            .env_remove("EDGESEAL_PASSPHRASE");
        c
    };
    let ingest = |k: usize, run: usize| -> Result<Child> {
        let err = dir.join(format!("ingest{k}.{run}.err"));
        let name = format!("bench-{}-w{k}", std::process::id());
        let c = child(&["ingest", "--name", &name])
            .env("EDGESEAL_LOG", "info")
            .stdout(std::fs::File::create(dir.join(format!("ingest{k}.{run}.out")))?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()?;
        let t = Instant::now();
        while !std::fs::read_to_string(&err).unwrap_or_default().contains("INFO ingesting") {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("ingest worker {k} did not start: {}", std::fs::read_to_string(&err).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    };
    let mut pool: Vec<Child> = (0..workers).map(|k| ingest(k, 0)).collect::<Result<_>>()?;

    // The devices connect first; the clock starts once all are connected.
    let topics = Topics::new(&cfg.mqtt.prefix);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = CancellationToken::new();
    let links_stop = CancellationToken::new();
    let connect0 = Instant::now();
    let mut fleet = Vec::with_capacity(devices);
    let mut ours = std::collections::HashSet::new();
    for i in 0..devices {
        let identity = edgeseal_agent::datadir::random_identity()?;
        ours.insert(identity.device_id().to_string());
        let opts = cfg.mqtt.link_options(&format!("edgeseal-bench-{}-{i}", std::process::id()))?;
        let (link, rx) = Link::start(opts, links_stop.clone())?;
        link.subscribe(&topics.stored(identity.device_id())).await?;
        fleet.push((identity, link, rx));
    }
    for (_, link, _) in &fleet {
        let mut up = link.connected();
        tokio::time::timeout(Duration::from_secs(60), up.wait_for(|u| *u))
            .await
            .context("a simulated device did not connect to the broker within 60 s")??;
    }
    let connected_in = connect0.elapsed();
    let start = Instant::now();
    let window = (start + run_for / 10, start + run_for);
    let tasks: Vec<_> = fleet
        .into_iter()
        .enumerate()
        .map(|(i, (identity, link, rx))| {
            let (topics, tally, stop) = (topics.clone(), tally.clone(), stop.clone());
            tokio::spawn(device(i, identity, link, rx, topics, batch, every, window, tally, stop))
        })
        .collect();
    let cpu0 = (crate::bench::cpu_seconds(), pg_cpu());
    let mut killed_cpu = 0.0;
    if kill {
        tokio::time::sleep(run_for / 2).await;
        killed_cpu = proc_cpu(pool[0].id());
        pool[0].kill()?;
        pool[0].wait()?;
        pool[0] = ingest(0, 1)?;
        tokio::time::sleep(run_for.saturating_sub(run_for / 2)).await;
    } else {
        tokio::time::sleep(run_for).await;
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let devices_cpu = crate::bench::cpu_seconds() - cpu0.0;
    let ingest_cpu: f64 = killed_cpu + pool.iter().map(|c| proc_cpu(c.id())).sum::<f64>();
    links_stop.cancel();
    for c in &pool {
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    }
    for c in &mut pool {
        let _ = c.wait();
    }
    let pg = pg_cpu() - cpu0.1;
    let redelivered: u64 =
        (0..workers).flat_map(|k| (0..2).map(move |r| (k, r))).map(|(k, r)| already_there(&dir, k, r)).sum();

    // The audit of what the store holds.
    let init = child(&["init", "--name", "auditor"]).output()?;
    if !init.status.success() {
        bail!("cannot make the auditor: {}", String::from_utf8_lossy(&init.stderr));
    }
    let audit = child(&["verify", "--all-devices", "--json"]).output()?;
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout)
        .with_context(|| format!("verify --all-devices said: {}", String::from_utf8_lossy(&audit.stderr)))?;
    // Only this run's devices: the store may hold others.
    let audited: Vec<&serde_json::Value> = report["devices"]
        .as_array()
        .map(|d| d.iter().filter(|d| d["device"].as_str().is_some_and(|id| ours.contains(id))).collect())
        .unwrap_or_default();
    let verified: u64 = audited
        .iter()
        .flat_map(|d| d["streams"].as_array().into_iter().flatten())
        .map(|s| s["verified"].as_u64().unwrap_or(0))
        .sum();
    let all_ok = audited.len() == devices && audited.iter().all(|d| d["ok"].as_bool() == Some(true));
    let _ = std::fs::remove_dir_all(&dir);

    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let mut lat = t.latencies_ms.clone();
    lat.sort_by(f64::total_cmp);
    let pct =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0);
    let measured = (window.1 - window.0).as_secs_f64();
    let batches_per_s = t.acked_in_window as f64 / measured;
    let lost = t.sent - t.acked;
    let ok = all_ok && lost == 0 && verified >= t.sent;
    if json_out {
        println!(
            "{}",
            json!({
                "devices": devices, "workers": workers, "batch": batch, "every_ms": every.as_millis() as u64,
                "connected_s": (connected_in.as_secs_f64() * 100.0).round() / 100.0,
                "batches_per_s": batches_per_s.round(), "readings_per_s": (batches_per_s * batch as f64).round(),
                "p50_ms": (pct(0.5) * 10.0).round() / 10.0, "p99_ms": (pct(0.99) * 10.0).round() / 10.0,
                "sent": t.sent, "acknowledged": t.acked, "lost": lost, "redelivered": redelivered,
                "verified": verified, "verify_ok": all_ok, "killed_worker": kill,
                "cpu_s": {"devices": (devices_cpu * 10.0).round() / 10.0, "ingest": (ingest_cpu * 10.0).round() / 10.0, "postgres": (pg * 10.0).round() / 10.0},
            })
        );
    } else {
        println!(
            "{devices} devices (connected in {:.1} s), {workers} ingest workers{}, batches of {batch} every {}:",
            connected_in.as_secs_f64(),
            if kill { ", worker 0 killed with SIGKILL halfway and restarted" } else { "" },
            humantime::format_duration(every)
        );
        println!(
            "  stored {:.0} batches/s, {:.0} readings/s; seal to stored p50 {:.1} ms, p99 {:.1} ms",
            batches_per_s,
            batches_per_s * batch as f64,
            pct(0.5),
            pct(0.99)
        );
        println!(
            "  {} sent, {} acknowledged, {lost} lost, {redelivered} redelivered (\"already there\"); verify --all-devices: {} ({verified} batches verified)",
            t.sent,
            t.acked,
            if all_ok { "ok" } else { "PROBLEMS" }
        );
        println!("  CPU: devices {devices_cpu:.1} s, ingest {ingest_cpu:.1} s, postgres {pg:.1} s");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// One simulated device: seals and publishes a batch every `every` until
/// `stop`, then waits (up to 30 s) until everything it sent is acknowledged.
#[allow(clippy::too_many_arguments)]
async fn device(
    i: usize,
    identity: Identity,
    link: Link,
    mut acks: tokio::sync::mpsc::Receiver<edgeseal_mqtt::link::Message>,
    topics: Topics,
    batch: usize,
    every: Duration,
    window: (Instant, Instant),
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
) {
    let device = identity.device_id();
    let stream = StreamName::new("temperature").expect("a valid name");
    let key = identity.epoch_key(&stream, 0);
    let topic = topics.batch(device, &stream);
    let mut model = Model::new(Kind::Temperature, i as u64 + 1);
    let (mut seq, mut prev, mut t) = (0u64, BatchHash::default(), 1_767_225_600_000i64);
    // Sent and not acknowledged: number, when sealed, the bytes, when last published.
    let mut pending: VecDeque<(u64, Instant, Vec<u8>, Instant)> = VecDeque::new();
    let mut resend = tokio::time::interval(Duration::from_secs(1));
    let mut scratch = Vec::new();
    // Spread the devices over the interval.
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + every.mul_f64((i % 1000) as f64 / 1000.0), every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick(), if stopping_since.is_none() => {
                if stop.is_cancelled() {
                    stopping_since = Some(Instant::now());
                    continue;
                }
                let mut b = ScalarBatch { unit: "°C".into(), ts: Vec::with_capacity(batch), values: Vec::with_capacity(batch), labels: vec![] };
                for _ in 0..batch {
                    b.ts.push(t);
                    b.values.push(model.sample(t));
                    t += 1000;
                }
                let mut salt = [0u8; 16];
                salt[..8].copy_from_slice(&seq.to_le_bytes());
                salt[8..].copy_from_slice(&(i as u64).to_le_bytes());
                let params = SealParams { device, stream: stream.clone(), seq, epoch: 0, prev, salt, covers: Vec::new() };
                let Ok(sealed) = seal(&Readings::Scalar(b), &params, &key, Some(&identity), &mut scratch) else { return };
                prev = sealed.hash;
                if link.send(&topic, sealed.bytes.clone(), false).await.is_ok() {
                    let now = Instant::now();
                    pending.push_back((seq, now, sealed.bytes, now));
                    tally.lock().unwrap_or_else(|p| p.into_inner()).sent += 1;
                }
                seq += 1;
            }
            _ = resend.tick() => {
                for (_, _, bytes, at) in pending.iter_mut().filter(|p| p.3.elapsed() >= RESEND_AFTER) {
                    if link.send(&topic, bytes.clone(), false).await.is_ok() {
                        *at = Instant::now();
                    }
                }
            }
            m = acks.recv() => {
                let Some(m) = m else { return };
                let Ok(stored) = serde_json::from_slice::<Stored>(&m.payload) else { continue };
                let now = Instant::now();
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                for run in &stored.batches {
                    // Acknowledged out of order across workers: take each number once.
                    pending.retain(|&(s, at, ..)| {
                        let hit = s >= run.from && s <= run.to;
                        if hit {
                            t.latencies_ms.push((now - at).as_secs_f64() * 1000.0);
                            t.acked += 1;
                            if now >= window.0 && now <= window.1 {
                                t.acked_in_window += 1;
                            }
                        }
                        !hit
                    });
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if stopping_since.is_some() => {}
        }
        if let Some(since) = stopping_since
            && (pending.is_empty() || since.elapsed() > Duration::from_secs(30))
        {
            return;
        }
    }
}

/// CPU seconds (user + system) of a running process.
fn proc_cpu(pid: u32) -> f64 {
    stat_cpu(&stat_fields(&format!("/proc/{pid}/stat")), false)
}

/// CPU seconds of every `postgres` process on this machine, with what the
/// postmaster reaped of ended backends (0 where there is none).
fn pg_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    let is_pg = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres");
    let mut total = 0.0;
    for e in dir.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if is_pg(&pid) {
            let fields = stat_fields(&format!("/proc/{pid}/stat"));
            // Only the postmaster (whose parent is not postgres) counts its reaped children.
            let postmaster = fields.get(1).is_some_and(|ppid| !is_pg(ppid));
            total += stat_cpu(&fields, postmaster);
        }
    }
    total
}

/// Batches an ingest run found already stored (redeliveries), from its last status line.
fn already_there(dir: &Path, k: usize, run: usize) -> u64 {
    let said = std::fs::read_to_string(dir.join(format!("ingest{k}.{run}.out"))).unwrap_or_default();
    said.lines()
        .rev()
        .find(|l| l.starts_with("stopped: "))
        .and_then(|l| l.split(", ").find(|p| p.ends_with(" already there")))
        .and_then(|p| p.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
