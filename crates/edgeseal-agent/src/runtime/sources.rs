//! Where readings come from: polled sensors (simulated, hwmon, GrovePi) on
//! their own interval, and JSON lines from standard input or a command.
//! Each source sends its readings to the sealer; read failures are counted
//! and logged, never fatal.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeseal_core::{Reading, Value};
use edgeseal_sensors::Sensor;
use edgeseal_sensors::grovepi::bus::Bus;
use edgeseal_sensors::grovepi::sensor::GroveSensor;
use edgeseal_sensors::hwmon;
use edgeseal_sensors::jsonl::parse_line;
use edgeseal_sensors::simulated::Simulated;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Stats;
use crate::config::{Config, SensorSpec};
use crate::{Error, Result, now_ms};

/// What a source reads.
enum Kind {
    Polled { sensor: Box<dyn Sensor>, interval: Duration },
    Lines { command: Option<String> },
}

/// A running source of readings.
pub struct Source {
    kind: Kind,
    out: mpsc::Sender<Reading>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The sources `cfg` declares, sending to `out`.
pub fn build(cfg: &Config, bus: Option<&Bus>, out: &mpsc::Sender<Reading>, stats: &Arc<Stats>) -> Result<Vec<Source>> {
    let mut kinds = Vec::new();
    for spec in &cfg.sensors {
        match spec {
            SensorSpec::Simulated { kind, stream, interval, seed } => kinds.push(Kind::Polled {
                sensor: Box::new(Simulated::new(*kind, stream.clone(), *seed)),
                interval: *interval,
            }),
            SensorSpec::Hwmon { interval, sysfs } => {
                let found = hwmon::discover(sysfs);
                if found.is_empty() {
                    info!("no hwmon or thermal temperature sensors under {}", sysfs.display());
                }
                for h in found {
                    kinds.push(Kind::Polled { sensor: Box::new(h), interval: *interval });
                }
            }
            SensorSpec::JsonLines { command } => kinds.push(Kind::Lines { command: command.clone() }),
            SensorSpec::Grove { kind, port, interval, stream } => {
                let bus =
                    bus.ok_or_else(|| Error::Config("a GrovePi sensor is configured but the bus is not open".into()))?;
                let sensor = GroveSensor::new(bus.clone(), *kind, *port, stream.as_deref()).map_err(Error::Config)?;
                kinds.push(Kind::Polled { sensor: Box::new(sensor), interval: *interval });
            }
        }
    }
    Ok(kinds.into_iter().map(|kind| Source { kind, out: out.clone(), stats: stats.clone() }).collect())
}

impl Source {
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Polled { sensor, interval } => {
                format!("{} every {}", sensor.describe(), humantime::format_duration(*interval))
            }
            Kind::Lines { command: None } => "JSON lines from standard input".into(),
            Kind::Lines { command: Some(c) } => format!("JSON lines from `{c}`"),
        }
    }

    /// Reads until `shutdown` (or the end of its input).
    pub async fn run(self, shutdown: CancellationToken) {
        let Source { kind, out, stats } = self;
        match kind {
            Kind::Polled { sensor, interval } => poll(sensor, interval, out, shutdown, stats).await,
            Kind::Lines { command: None } => {
                read_lines(
                    BufReader::with_capacity(LINE_BUFFER, tokio::io::stdin()),
                    "standard input",
                    &out,
                    &shutdown,
                    &stats,
                )
                .await;
            }
            Kind::Lines { command: Some(c) } => run_command(&c, out, shutdown, stats).await,
        }
    }
}

/// Drops readings that are not finite numbers, counting them as failed reads;
/// notes the latest value of each stream.
async fn forward(r: Reading, what: &str, tx: &mpsc::Sender<Reading>, stats: &Stats) -> bool {
    if let Value::Scalar { value, unit, .. } = &r.value {
        if !value.is_finite() {
            stats.read_errors.fetch_add(1, Ordering::Relaxed);
            let kind = format!("{what}: {} not a number", r.stream);
            crate::quiet::once_a_minute(&kind, |more| {
                warn!("{what}: dropped a reading of {} that is not a number ({value}){more}", r.stream)
            });
            return true;
        }
        let mut latest = stats.latest.lock().unwrap_or_else(|p| p.into_inner());
        match latest.get_mut(&r.stream) {
            // The common case allocates nothing.
            Some((v, u)) if u == unit => *v = *value,
            _ => {
                latest.insert(r.stream.clone(), (*value, unit.clone()));
            }
        }
    }
    tx.send(r).await.is_ok()
}

async fn poll(
    mut sensor: Box<dyn Sensor>,
    interval: Duration,
    tx: mpsc::Sender<Reading>,
    stop: CancellationToken,
    stats: Arc<Stats>,
) {
    let what = sensor.describe();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Hardware reads block (a DHT read takes tens of ms): off the async runtime.
        let (back, result) = match tokio::task::spawn_blocking(move || {
            let r = sensor.read(now_ms());
            (sensor, r)
        })
        .await
        {
            Ok(v) => v,
            Err(e) => {
                error!("{what}: the sensor stopped: {e}");
                return;
            }
        };
        sensor = back;
        let health = result.as_ref().map(drop).map_err(|e| e.to_string());
        stats.live.sensor_read(&what, interval, health, now_ms());
        match result {
            Ok(readings) => {
                if failures > 0 {
                    info!("{what}: reading again after {failures} failed reads");
                    failures = 0;
                }
                for r in readings {
                    if !forward(r, &what, &tx, &stats).await {
                        return;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                stats.read_errors.fetch_add(1, Ordering::Relaxed);
                if failures == 1 || failures.is_multiple_of(60) {
                    warn!("{e} ({failures} failed reads in a row)");
                }
            }
        }
    }
}

/// Bytes read from a JSON-lines source at a time.
const LINE_BUFFER: usize = 256 * 1024;

async fn read_lines<R: AsyncBufRead + Unpin>(
    mut reader: R,
    what: &str,
    tx: &mpsc::Sender<Reading>,
    stop: &CancellationToken,
    stats: &Stats,
) {
    let mut bytes = Vec::new();
    let mut n = 0u64;
    loop {
        bytes.clear();
        // Not cancel safe, and need not be: a cancelled read ends the source.
        let line = tokio::select! {
            _ = stop.cancelled() => return,
            r = reader.read_until(b'\n', &mut bytes) => r,
        };
        match line {
            Ok(0) => {
                info!("{what}: end of input after {n} lines");
                return;
            }
            Ok(_) => {
                n += 1;
                let Ok(l) = std::str::from_utf8(&bytes) else {
                    stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    stats.refuse("not_a_reading", 1);
                    let kind = format!("{what}: not UTF-8");
                    crate::quiet::once_a_minute(&kind, |more| {
                        warn!("{what}: line {n} is not UTF-8 text; skipped{more}")
                    });
                    continue;
                };
                if l.trim().is_empty() {
                    continue;
                }
                match parse_line(l, n, now_ms()) {
                    Ok(r) => {
                        if !forward(r, what, tx, stats).await {
                            return;
                        }
                    }
                    Err(e) => {
                        stats.read_errors.fetch_add(1, Ordering::Relaxed);
                        stats.refuse("not_a_reading", 1);
                        let kind = format!("{what}: not a reading");
                        crate::quiet::once_a_minute(&kind, |more| warn!("{what}: {e}{more}"));
                    }
                }
            }
            Err(e) => {
                warn!("{what}: cannot read: {e}");
                return;
            }
        }
    }
}

/// Runs a command and reads JSON lines from its output, restarting it with backoff when it exits.
async fn run_command(command: &str, tx: mpsc::Sender<Reading>, stop: CancellationToken, stats: Arc<Stats>) {
    let what = format!("`{command}`");
    let mut backoff = Duration::from_secs(1);
    while !stop.is_cancelled() {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(mut child) => {
                if let Some(out) = child.stdout.take() {
                    read_lines(BufReader::with_capacity(LINE_BUFFER, out), &what, &tx, &stop, &stats).await;
                }
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            Err(e) => warn!("{what}: cannot start: {e}"),
        }
        if stop.is_cancelled() {
            break;
        }
        warn!("{what} exited; restarting in {}", humantime::format_duration(backoff));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}
