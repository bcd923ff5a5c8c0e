//! `edgeseal up`: the agent.
//!
//! ```text
//! sensor tasks ──mpsc──> sealer: journal (state.db) → batcher → seal → outbox (state.db)
//!                                                                    │ notify
//!                                   drainer: outbox → store, remember heads, sign checkpoints
//! ```
//! Shutdown order: stop the sensors; the sealer drains the channel, cuts every
//! open batch and seals it; then the drainer makes a last attempt to store the
//! outbox. Whatever the store did not take stays in the outbox for next time.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgeseal_core::chain::Head;
use edgeseal_core::checkpoint::Checkpoint;
use edgeseal_core::envelope::{SealParams, seal};
use edgeseal_core::keys::Identity;
use edgeseal_core::reading::into_batches;
use edgeseal_core::{DeviceId, Reading, StreamName, Value};
use edgeseal_sensors::Sensor;
use edgeseal_sensors::batcher::{Batcher, Cut};
use edgeseal_sensors::grovepi::bus::{Answer, Bus, Op};
use edgeseal_sensors::grovepi::lcd::WIDTH;
use edgeseal_sensors::grovepi::sensor::GroveSensor;
use edgeseal_sensors::hwmon;
use edgeseal_sensors::jsonl::parse_line;
use edgeseal_sensors::simulated::{Kind, Simulated};
use edgeseal_store::local::LocalState;
use edgeseal_store::{AnyStore, BatchRow, ConnectOptions, Store};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::cli::UpArgs;
use crate::config::{Config, SensorSpec};
use crate::control::{Command, Control, describe_policy, kept_policy};
use crate::keyfile::{self, PassphraseSource};
use crate::share::{Event, Grants, Inbox, Topics, log_event};
use crate::timefmt::now_ms;
use edgeseal_mqtt::link::{Link, Message};

/// How long the last attempt to store the outbox may take at shutdown.
const FINAL_DRAIN: Duration = Duration::from_secs(10);
/// Batches per store transaction.
const DRAIN_CHUNK: u32 = 256;
/// Batches published (in flight together) per round.
const PUBLISH_CHUNK: u32 = 256;
/// How often an idle publisher looks for grants to publish (`share` and `revoke` store them).
const GRANT_POLL: Duration = Duration::from_secs(1);
/// Readings are journaled (accepted) at most this long after they were read,
/// in one transaction, so a busy agent commits a few times a second rather than per reading.
const JOURNAL_WINDOW: Duration = Duration::from_millis(250);
/// Most readings journaled in one transaction.
const JOURNAL_MAX: usize = 1024;

#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    read_errors: AtomicU64,
    sealed: AtomicU64,
    stored: AtomicU64,
    /// The store is failing (shown on the LCD).
    store_down: AtomicBool,
    /// The broker is configured but unreachable (shown on the LCD).
    broker_down: AtomicBool,
    published: AtomicU64,
    received: AtomicU64,
    /// The newest value of each scalar stream (shown on the LCD).
    latest: Mutex<HashMap<StreamName, (f64, String)>>,
    /// Readings as they are accepted and received, for the HTTP server.
    live: Arc<crate::live::Live>,
}

pub async fn up(mut cfg: Config, args: UpArgs, pass: PassphraseSource) -> Result<std::process::ExitCode> {
    apply_sensor_flags(&mut cfg, &args.sensors)?;
    let run_for = args
        .run_for
        .as_deref()
        .map(|s| humantime::parse_duration(s).with_context(|| format!("--for {s:?} is not a duration (e.g. 30s, 10m)")))
        .transpose()?;

    let (name, identity) = if keyfile::keystore_path(&cfg.data_dir).exists() {
        keyfile::load(&cfg.data_dir, &pass).await?
    } else {
        let (id, _) = keyfile::init(&cfg.data_dir, &cfg.name, &pass, false)?;
        println!(
            "created a new agent in {} (keystore {}, mode 0600)",
            cfg.data_dir.display(),
            keyfile::keystore_path(&cfg.data_dir).display()
        );
        (cfg.name.clone(), id)
    };
    let identity = Arc::new(identity);
    let device = identity.device_id();
    let mut local = LocalState::open(&cfg.state_path()).await.context("cannot open the local state (state.db)")?;
    keyfile::make_private(&cfg.state_path());
    let embedded = start_embedded(&mut cfg).await?;
    if cfg.mqtt.broker.is_some() {
        local.enable_publishing();
    }
    let store = AnyStore::connect(&cfg.store_url, ConnectOptions { lazy: true, timeout: cfg.store_timeout }).await?;

    resume_from_store(&store, &local, device, cfg.store_timeout).await;

    let bus = if cfg.uses_grovepi() {
        let spec = cfg.grovepi_bus.clone();
        Some(tokio::task::spawn_blocking(move || Bus::open(&spec)).await??)
    } else {
        None
    };
    let sensors = build_sensors(&cfg, bus.as_ref())?;
    // An agent that only receives from peers runs until stopped, not until its (no) sensors finish.
    let stop_when_sensors_end = !sensors.is_empty() || cfg.mqtt.broker.is_none();
    println!("edgeseal up: agent {name:?}, device {device}, fingerprint {}", identity.public().fingerprint());
    println!("  data dir: {}", cfg.data_dir.display());
    println!("  store:    {}", store.url());
    if let Some(bus) = &bus
        && let Ok(Answer::Version(a, b, c)) = bus.call(Op::Version)
    {
        println!("  grovepi:  firmware {a}.{b}.{c} on {}", bus.name());
    }
    if sensors.is_empty() {
        println!("  sensors:  none");
    }
    for s in &sensors {
        println!("  sensor:   {}", s.describe());
    }
    // A policy set from the web UI or API outlasts restarts; flags on the command line win over it.
    let flags = args.batch_count.is_some() || args.batch_interval.is_some();
    let from_ui = match kept_policy(&local).await {
        Some(p) if p != cfg.batch && !flags => {
            cfg.batch = p;
            " (set from the web UI or API; it overrides batch.count and batch.interval of the configuration)"
        }
        _ => "",
    };
    println!("  batches:  {}{from_ui}", describe_policy(cfg.batch));
    if let (Some(b), Some(e)) = (&embedded, &cfg.embedded) {
        println!(
            "  broker:   embedded, MQTT 3.1.1/5 on {}, security level {}, files in {}",
            b.local_addr(),
            e.level.describe(),
            e.dir.display()
        );
    }
    if let Some(url) = &cfg.mqtt.broker {
        println!("  sharing:  {url}, topics {}/{device}/<stream>/batch", cfg.mqtt.prefix);
    }
    if bus.is_some() && cfg.lcd.enabled {
        println!("  lcd:      {} every {}", lcd_streams(&cfg), humantime::format_duration(cfg.lcd.refresh));
    }
    println!("Stop with Ctrl-C: every reading taken is sealed and stored first.");

    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let sensor_tasks = TaskTracker::new();
    let (tx, rx) = mpsc::channel::<Reading>(4096);
    for s in sensors {
        sensor_tasks.spawn(s.run(tx.clone(), stop.clone(), stats.clone()));
    }
    sensor_tasks.close();
    drop(tx);

    // The LCD is an output, not a sensor: it runs until the agent stops, not until the sensors finish.
    let lcd = match (&bus, cfg.lcd.enabled) {
        (Some(bus), true) => Some(tokio::spawn(drive_lcd(bus.clone(), cfg.lcd.clone(), stop.clone(), stats.clone()))),
        _ => None,
    };
    let notify = Arc::new(Notify::new());
    let (commands, commands_rx) = mpsc::channel(16);
    let publish_notify = Arc::new(Notify::new());
    let sealer = Sealer {
        publish_notify: publish_notify.clone(),
        local: local.clone(),
        identity: identity.clone(),
        batcher: Batcher::new(cfg.batch, cfg.per_stream.clone()),
        scratch: Vec::new(),
        notify: notify.clone(),
        started: Instant::now(),
        stats: stats.clone(),
        commands: commands_rx,
    };
    let mut sealer = tokio::spawn(sealer.run(rx));
    let drain_stop = CancellationToken::new();
    let drainer = Drainer {
        local: local.clone(),
        store,
        identity: identity.clone(),
        device,
        retry_max: cfg.retry_max,
        checkpoint_every: cfg.checkpoint_every,
        notify: notify.clone(),
        sqlite_file: sqlite_file(&cfg.store_url),
        stats: stats.clone(),
    };
    let drainer = tokio::spawn(drainer.run(drain_stop.clone()));
    let web_tasks = TaskTracker::new();
    let web_stop = CancellationToken::new();
    let cfg_shared = Arc::new(cfg.clone());
    let control = Control::new(cfg_shared.clone(), identity.clone(), name.clone(), cfg.batch, commands);
    let api = crate::api::Api { cfg: cfg_shared, identity: identity.clone(), control: Arc::new(control) };
    // Other machines need the API token; this machine's clients do not, as with the original.
    let token = match cfg.web_listen.iter().any(|a| !a.ip().is_loopback()) {
        true => Some(keyfile::api_token(&cfg.data_dir)?),
        false => None,
    };
    let access = Arc::new(crate::web::Access::new(token.as_ref().map(|(t, _)| t.clone())));
    let apis = crate::cloudsync::CloudSync::new(cfg.mqtt.clone())
        .router()
        .merge(crate::api::router(api.clone()))
        .merge(stats.live.clone().router())
        .merge(crate::ui::router(Arc::new(crate::ui::Ui {
            name: name.clone(),
            device: device.to_string(),
            fingerprint: identity.public().fingerprint(),
            live: stats.live.clone(),
            api,
            access: access.clone(),
            flash: Default::default(),
        })));
    let router = crate::web::router(device.to_string(), apis, access);
    for addr in crate::web::start(&cfg.web_listen, router, token.is_some(), &web_tasks, &web_stop).await? {
        println!("  web:      http://{addr}/ (API: /api/v1/, CloudSync: /api/v1/orchestration/cloudsyncmgr/)");
        if let (false, Some((_, path))) = (addr.ip().is_loopback(), &token) {
            println!(
                "            other machines sign in with (or send Authorization: Bearer) the token in {}",
                path.display()
            );
        }
    }
    let sharing = match cfg.mqtt.broker.is_some() {
        true => Some(
            start_sharing(
                &cfg,
                identity.clone(),
                local.clone(),
                notify.clone(),
                publish_notify.clone(),
                stats.clone(),
                drain_stop.clone(),
            )
            .await?,
        ),
        false => None,
    };

    let mut sealer_result = None;
    tokio::select! {
        _ = shutdown_signal() => info!("signal received; stopping"),
        _ = sleep_opt(run_for) => info!("--for elapsed; stopping"),
        _ = sensor_tasks.wait(), if stop_when_sensors_end => info!("every sensor has finished; stopping"),
        r = &mut sealer, if stop_when_sensors_end => sealer_result = Some(r),
    }
    stop.cancel();
    sensor_tasks.wait().await;
    if let Some(lcd) = lcd {
        let _ = lcd.await;
    }
    let sealed = match sealer_result {
        Some(r) => r,
        None => sealer.await,
    };
    drain_stop.cancel();
    if tokio::time::timeout(FINAL_DRAIN + Duration::from_secs(5), drainer).await.is_err() {
        warn!("the store did not answer in time at shutdown; batches wait in the outbox");
    }
    if let Some(tasks) = sharing {
        tasks.close();
        if tokio::time::timeout(FINAL_DRAIN + Duration::from_secs(5), tasks.wait()).await.is_err() {
            warn!("the broker did not acknowledge in time at shutdown; batches wait in the publish queue");
        }
    }
    web_stop.cancel();
    web_tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), web_tasks.wait()).await;
    if let Some(b) = embedded {
        let _ = tokio::time::timeout(Duration::from_secs(10), b.stop()).await;
    }
    let backlog = local.backlog().await.unwrap_or_default();
    local.close().await;
    let waiting: u64 = backlog.values().map(|b| b.outbox_batches).sum();
    let shared = match cfg.mqtt.broker {
        Some(_) => format!(
            ", {} published, {} received from peers",
            stats.published.load(Ordering::Relaxed),
            stats.received.load(Ordering::Relaxed)
        ),
        None => String::new(),
    };
    println!(
        "stopped: {} readings accepted, {} read errors, {} batches sealed, {} stored{shared}{}",
        stats.accepted.load(Ordering::Relaxed),
        stats.read_errors.load(Ordering::Relaxed),
        stats.sealed.load(Ordering::Relaxed),
        stats.stored.load(Ordering::Relaxed),
        if waiting > 0 { format!(", {waiting} waiting in the local outbox for the store") } else { String::new() }
    );
    match sealed {
        Ok(Ok(())) => Ok(std::process::ExitCode::SUCCESS),
        Ok(Err(e)) => Err(e.context("sealing failed")),
        Err(e) => bail!("the sealer stopped unexpectedly: {e}"),
    }
}

/// Starts the embedded broker when `[broker]` asks for one and no other is
/// configured, and points `cfg.mqtt` at it. A taken port is reported, with
/// what to do, and the agent runs on without sharing.
async fn start_embedded(cfg: &mut Config) -> Result<Option<Box<dyn edgeseal_mqtt::broker::Broker>>> {
    let Some(e) = cfg.embedded.clone().filter(|_| cfg.mqtt.broker.is_none()) else {
        return Ok(None);
    };
    match crate::embedded::start(&e).await {
        Ok(b) => {
            cfg.mqtt = cfg.mqtt.for_embedded(b.url(), &e);
            Ok(Some(b))
        }
        Err(err) if crate::embedded::is_port_taken(&err) => {
            eprintln!(
                "warning: the embedded broker did not start: {err}. This agent stores but does not share; {}.",
                crate::embedded::port_taken_help(&e)
            );
            // Nor does it pair through whatever holds the port (the web UI and API read this).
            cfg.embedded = None;
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Streams the store holds for this device but state.db does not know (it was
/// lost or the data directory restored without it) continue after the store's
/// newest authentic batch, instead of starting again at 0 and colliding with
/// what is stored. Best effort: an unreachable store is reported, not fatal.
async fn resume_from_store(store: &AnyStore, local: &LocalState, device: DeviceId, timeout: Duration) {
    let known: Vec<StreamName> = match local.stream_states().await {
        Ok(s) => s.into_iter().map(|(name, _)| name).collect(),
        Err(e) => return warn!("cannot read the local stream state: {e}"),
    };
    let work = async {
        store.migrate().await?;
        let mut resumed = Vec::new();
        for s in store.streams().await?.into_iter().filter(|s| s.device == device) {
            let Ok(stream) = StreamName::new(s.stream.clone()) else { continue };
            if known.contains(&stream) {
                continue;
            }
            let range = edgeseal_store::TimeRange { from: Some(s.last_ts), to: None };
            let rows = store.batches(device, &stream, range).await?;
            // The same per-row check a reader applies: authentic, signed, and where it claims to be.
            let head = edgeseal_store::reader::inspect_all(device, &stream, &rows)
                .into_iter()
                .filter_map(|i| i.verdict.ok())
                .find(|g| g.signed && g.header.seq == s.head_seq);
            if let Some(g) = head
                && local.seed_stream(&stream, g.header.seq + 1, g.hash, g.header.epoch).await?
            {
                resumed.push((stream.clone(), g.header.seq));
            }
        }
        Ok::<_, edgeseal_store::Error>(resumed)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(resumed)) => {
            for (stream, seq) in resumed {
                info!("{stream}: state.db had no record of it; continuing after batch {seq} found in the store");
            }
        }
        Ok(Err(e)) => warn!(
            "cannot check the store for streams sealed before ({e}); if state.db was lost, new batches may collide"
        ),
        Err(_) => warn!(
            "the store did not answer in time to check streams sealed before; if state.db was lost, new batches may collide"
        ),
    }
}

pub(crate) async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    Some(PathBuf::from(rest.split('?').next().unwrap_or(rest)))
}

/// `--sensor` replaces the configured sensors.
fn apply_sensor_flags(cfg: &mut Config, flags: &[String]) -> Result<()> {
    if flags.is_empty() {
        return Ok(());
    }
    let mut sensors = Vec::new();
    for f in flags {
        match f.as_str() {
            "simulated" => {
                for (i, kind) in [Kind::Temperature, Kind::Humidity, Kind::AirQuality].into_iter().enumerate() {
                    sensors.push(SensorSpec::Simulated {
                        kind,
                        stream: StreamName::new(kind.name()).expect("built-in names are valid"),
                        interval: Duration::from_secs(1),
                        seed: i as u64 + 1,
                    });
                }
            }
            "hwmon" => {
                sensors.push(SensorSpec::Hwmon { interval: Duration::from_secs(10), sysfs: PathBuf::from("/sys") })
            }
            "stdin" => sensors.push(SensorSpec::JsonLines { command: None }),
            "none" => {}
            other => bail!("--sensor {other:?}: use simulated, hwmon, stdin or none"),
        }
    }
    cfg.sensors = sensors;
    Ok(())
}

/// A running source of readings.
enum Source {
    Polled { sensor: Box<dyn Sensor>, interval: Duration },
    Lines { command: Option<String> },
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Polled { sensor, interval } => {
                format!("{} every {}", sensor.describe(), humantime::format_duration(*interval))
            }
            Source::Lines { command: None } => "JSON lines from standard input".into(),
            Source::Lines { command: Some(c) } => format!("JSON lines from `{c}`"),
        }
    }

    async fn run(self, tx: mpsc::Sender<Reading>, stop: CancellationToken, stats: Arc<Stats>) {
        match self {
            Source::Polled { sensor, interval } => poll(sensor, interval, tx, stop, stats).await,
            Source::Lines { command: None } => {
                read_lines(BufReader::new(tokio::io::stdin()), "standard input", &tx, &stop, &stats).await;
            }
            Source::Lines { command: Some(c) } => run_command(&c, tx, stop, stats).await,
        }
    }
}

fn lcd_streams(cfg: &Config) -> String {
    cfg.lcd.streams.iter().map(StreamName::as_str).collect::<Vec<_>>().join(", ")
}

fn build_sensors(cfg: &Config, bus: Option<&Bus>) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for spec in &cfg.sensors {
        match spec {
            SensorSpec::Simulated { kind, stream, interval, seed } => out.push(Source::Polled {
                sensor: Box::new(Simulated::new(*kind, stream.clone(), *seed)),
                interval: *interval,
            }),
            SensorSpec::Hwmon { interval, sysfs } => {
                let found = hwmon::discover(sysfs);
                if found.is_empty() {
                    info!("no hwmon or thermal temperature sensors under {}", sysfs.display());
                }
                for h in found {
                    out.push(Source::Polled { sensor: Box::new(h), interval: *interval });
                }
            }
            SensorSpec::JsonLines { command } => out.push(Source::Lines { command: command.clone() }),
            SensorSpec::Grove { kind, port, interval, stream } => {
                let bus = bus.context("a GrovePi sensor is configured but the bus is not open")?;
                let sensor =
                    GroveSensor::new(bus.clone(), *kind, *port, stream.as_deref()).map_err(anyhow::Error::msg)?;
                out.push(Source::Polled { sensor: Box::new(sensor), interval: *interval });
            }
        }
    }
    Ok(out)
}

/// Shows the latest readings on the Grove LCD, two streams at a time, and the
/// agent's state as the backlight colour: green running, red store down.
async fn drive_lcd(bus: Bus, cfg: crate::config::LcdConfig, stop: CancellationToken, stats: Arc<Stats>) {
    let mut tick = tokio::time::interval(cfg.refresh);
    let mut page = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let lines = lcd_lines(&cfg.streams, page, &stats);
        page += 1;
        let rgb = if stats.store_down.load(Ordering::Relaxed) {
            (255, 0, 0)
        } else if stats.broker_down.load(Ordering::Relaxed) {
            (255, 120, 0)
        } else {
            (0, 160, 0)
        };
        let bus = bus.clone();
        match tokio::task::spawn_blocking(move || bus.call(Op::Lcd { lines, rgb })).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!("lcd: {e}"),
            Err(e) => debug!("lcd: {e}"),
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        bus.call(Op::Lcd { lines: ["edgeseal".into(), "stopped".into()], rgb: (0, 0, 60) })
    })
    .await;
}

/// Two 16-character lines for page `page` of the streams.
fn lcd_lines(streams: &[StreamName], page: usize, stats: &Stats) -> [String; 2] {
    let latest = stats.latest.lock().unwrap_or_else(|p| p.into_inner());
    let mut lines = [String::new(), String::new()];
    let n = streams.len().max(1);
    for (row, line) in lines.iter_mut().enumerate() {
        let Some(stream) = streams.get((page * 2 + row) % n) else { continue };
        let value = match latest.get(stream) {
            Some((v, unit)) => format!("{v}{}", unit.replace("°", "")),
            None => "-".to_string(),
        };
        let room = WIDTH.saturating_sub(value.len() + 1);
        let name: String = stream.as_str().chars().take(room).collect();
        *line = format!("{name:<room$} {value}");
    }
    lines
}

/// Drops readings that are not finite numbers, counting them as failed reads;
/// notes the latest value of each stream.
async fn forward(r: Reading, what: &str, tx: &mpsc::Sender<Reading>, stats: &Stats) -> bool {
    if let Value::Scalar { value, unit, .. } = &r.value {
        if !value.is_finite() {
            stats.read_errors.fetch_add(1, Ordering::Relaxed);
            warn!("{what}: dropped a reading of {} that is not a number ({value})", r.stream);
            return true;
        }
        stats.latest.lock().unwrap_or_else(|p| p.into_inner()).insert(r.stream.clone(), (*value, unit.clone()));
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

async fn read_lines<R: AsyncBufRead + Unpin>(
    reader: R,
    what: &str,
    tx: &mpsc::Sender<Reading>,
    stop: &CancellationToken,
    stats: &Stats,
) {
    let mut lines = reader.lines();
    let mut n = 0u64;
    loop {
        let line = tokio::select! {
            _ = stop.cancelled() => return,
            l = lines.next_line() => l,
        };
        match line {
            Ok(Some(l)) => {
                n += 1;
                if l.trim().is_empty() {
                    continue;
                }
                match parse_line(&l, n, now_ms()) {
                    Ok(r) => {
                        if !forward(r, what, tx, stats).await {
                            return;
                        }
                    }
                    Err(e) => {
                        stats.read_errors.fetch_add(1, Ordering::Relaxed);
                        warn!("{what}: {e}");
                    }
                }
            }
            Ok(None) => {
                info!("{what}: end of input after {n} lines");
                return;
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
                    read_lines(BufReader::new(out), &what, &tx, &stop, &stats).await;
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

/// Journals readings, cuts batches and seals them into the outbox.
struct Sealer {
    publish_notify: Arc<Notify>,
    local: LocalState,
    identity: Arc<Identity>,
    batcher: Batcher,
    scratch: Vec<u8>,
    notify: Arc<Notify>,
    started: Instant,
    stats: Arc<Stats>,
    commands: mpsc::Receiver<Command>,
}

impl Sealer {
    fn mono(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Reading>) -> Result<()> {
        let pending = self.local.pending().await?;
        if !pending.is_empty() {
            info!("resuming {} readings accepted before the last stop", pending.len());
        }
        let mut cuts = Vec::new();
        for (id, r) in pending {
            cuts.extend(self.batcher.push(id, r, self.mono()));
        }
        self.seal_round(cuts).await?;
        let mut buf = Vec::with_capacity(JOURNAL_MAX);
        loop {
            let deadline = self.batcher.next_deadline().map(|d| self.started + Duration::from_millis(d.max(0) as u64));
            tokio::select! {
                n = rx.recv_many(&mut buf, JOURNAL_MAX) => {
                    if n == 0 {
                        break;
                    }
                    // Gather what else arrives shortly, so one commit journals many readings.
                    let window = tokio::time::Instant::now() + JOURNAL_WINDOW;
                    let mut closed = false;
                    while buf.len() < JOURNAL_MAX {
                        let room = JOURNAL_MAX - buf.len();
                        tokio::select! {
                            n = rx.recv_many(&mut buf, room) => if n == 0 { closed = true; break },
                            _ = tokio::time::sleep_until(window) => break,
                        }
                    }
                    self.accept(&mut buf).await?;
                    if closed {
                        break;
                    }
                }
                _ = sleep_until_opt(deadline) => {
                    let cuts = self.batcher.due(self.mono());
                    self.seal_round(cuts).await?;
                }
                Some(cmd) = self.commands.recv() => self.command(cmd).await?,
            }
        }
        let cuts = self.batcher.flush();
        self.seal_round(cuts).await.map(drop)
    }

    /// "Store now" and the batch policy, from the web UI and the API.
    async fn command(&mut self, cmd: Command) -> Result<()> {
        match cmd {
            Command::StoreNow(reply) => {
                let cuts = self.batcher.flush();
                let readings = cuts.iter().map(|c| c.readings.len()).sum();
                let res = self.seal_round(cuts).await;
                let _ = reply.send(res.as_ref().map(|&b| (b, readings)).map_err(|e| anyhow::anyhow!("{e:#}")));
                res.map(drop)
            }
            Command::SetPolicy(p) => {
                info!("batches from now on: {}", describe_policy(p));
                self.batcher.set_default(p);
                Ok(())
            }
        }
    }

    async fn accept(&mut self, buf: &mut Vec<Reading>) -> Result<()> {
        let ids = self.local.journal(buf).await.context("cannot journal readings in state.db")?;
        self.stats.accepted.fetch_add(ids.len() as u64, Ordering::Relaxed);
        let device = self.identity.device_id();
        for r in buf.iter() {
            self.stats.live.local(device, r);
        }
        let mut cuts = Vec::new();
        for (id, r) in ids.into_iter().zip(buf.drain(..)) {
            cuts.extend(self.batcher.push(id, r, self.mono()));
        }
        self.seal_round(cuts).await.map(drop)
    }

    /// Seals what one round cut. Only the last batch of each stream in the
    /// round is signed: it covers the earlier ones through their chain links
    /// (format.md), so a burst of small batches (the live "every reading"
    /// cadence) costs one signature per stream and round, a round holds at
    /// most `JOURNAL_MAX` readings, and every round ends on a signed batch.
    /// Returns how many batches it sealed.
    async fn seal_round(&mut self, cuts: Vec<Cut>) -> Result<usize> {
        let last: HashMap<StreamName, usize> = cuts.iter().enumerate().map(|(i, c)| (c.stream.clone(), i)).collect();
        let mut sealed = 0;
        for (i, cut) in cuts.into_iter().enumerate() {
            let sign = last.get(&cut.stream) == Some(&i);
            sealed += self.seal(cut, sign).await?;
        }
        Ok(sealed)
    }

    async fn seal(&mut self, cut: Cut, sign: bool) -> Result<usize> {
        let batches = into_batches(&cut.readings);
        let n = batches.len();
        for (i, (readings, last)) in batches.into_iter().enumerate() {
            let signer = (sign && i + 1 == n).then_some(&*self.identity);
            let st = self.local.stream_state(&cut.stream).await?;
            let key = self.identity.epoch_key(&cut.stream, st.epoch);
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
            let params = SealParams {
                device: self.identity.device_id(),
                stream: cut.stream.clone(),
                seq: st.next_seq,
                epoch: st.epoch,
                prev: st.head,
                salt,
            };
            let sealed = seal(&readings, &params, &key, signer, &mut self.scratch)
                .with_context(|| format!("cannot seal a batch of {}", cut.stream))?;
            let row = BatchRow::from(sealed);
            self.local.commit_sealed(&row, Some(cut.ids[last])).await?;
            self.stats.sealed.fetch_add(1, Ordering::Relaxed);
            debug!("sealed batch {} of {} ({} readings)", row.seq, row.stream, row.count);
            self.notify.notify_one();
            self.publish_notify.notify_one();
        }
        Ok(n)
    }
}

/// Publish queue → broker (and grants), broker → inbox → outbox. The tasks end
/// when `stop` is cancelled, after a last attempt to publish what is queued.
async fn start_sharing(
    cfg: &Config,
    identity: Arc<Identity>,
    local: LocalState,
    notify: Arc<Notify>,
    publish_notify: Arc<Notify>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Result<TaskTracker> {
    let device = identity.device_id();
    let mut opts = cfg.mqtt.link_options(&format!("edgeseal-{device}"))?;
    opts.persistent_session = true;
    let link_stop = CancellationToken::new();
    let (link, rx) = Link::start(opts, link_stop.clone())?;
    let topics = Topics::new(&cfg.mqtt.prefix);
    let mut inbox = Inbox::new(identity.clone(), local.clone(), topics.clone()).await?;
    inbox.store = true;
    inbox.subscribe(&link).await?;
    let tasks = TaskTracker::new();
    let publisher = Publisher {
        sealed: publish_notify,
        local: local.clone(),
        link: link.clone(),
        topics,
        identity,
        stats: stats.clone(),
    };
    let publish_done = tasks.spawn(publisher.run(stop.clone()));
    tasks.spawn(receive(inbox, link.clone(), rx, notify, stats.clone(), stop.clone()));
    let mut connected = link.connected();
    tasks.spawn(async move {
        let watch_stop = stop.clone();
        loop {
            stats.broker_down.store(!*connected.borrow_and_update(), Ordering::Relaxed);
            tokio::select! {
                r = connected.changed() => if r.is_err() { break },
                _ = watch_stop.cancelled() => break,
            }
        }
        // The link lives until the publisher's last attempt is over.
        let _ = publish_done.await;
        link_stop.cancel();
    });
    Ok(tasks)
}

/// Publishes sealed batches from the durable publish queue, in order, each
/// removed only once the broker acknowledged it; and pending grants (retained).
struct Publisher {
    /// Woken by the sealer for each sealed batch.
    sealed: Arc<Notify>,
    local: LocalState,
    link: Link,
    topics: Topics,
    identity: Arc<Identity>,
    stats: Arc<Stats>,
}

impl Publisher {
    async fn run(self, stop: CancellationToken) {
        let device = self.identity.device_id();
        let mut backoff = Duration::from_millis(250);
        let mut final_deadline: Option<Instant> = None;
        let mut connected = self.link.connected();
        let mut last_grants: Option<Instant> = None;
        loop {
            if stop.is_cancelled() && final_deadline.is_none() {
                final_deadline = Some(Instant::now() + FINAL_DRAIN);
            }
            if final_deadline.is_some_and(|d| Instant::now() > d) {
                return;
            }
            if !*connected.borrow_and_update() {
                tokio::select! {
                    _ = connected.changed() => {}
                    _ = stop.cancelled(), if final_deadline.is_none() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)), if final_deadline.is_some() => {}
                }
                continue;
            }
            // Grants change rarely (`share`, `revoke`): look for new ones now and then, not every round.
            if last_grants.is_none_or(|t| t.elapsed() >= GRANT_POLL) {
                let grants = Grants { identity: &self.identity, local: &self.local };
                if let Err(e) = grants.publish(&self.link, &self.topics).await {
                    debug!("grants wait: {e:#}");
                }
                last_grants = Some(Instant::now());
            }
            let queue = match self.local.publish_queue(PUBLISH_CHUNK).await {
                Ok(q) => q,
                Err(e) => {
                    error!("cannot read the publish queue: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if queue.is_empty() {
                if final_deadline.is_some() {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = self.sealed.notified() => {}
                    _ = tokio::time::sleep(GRANT_POLL) => {}
                }
                continue;
            }
            // Queued one after another, so they reach the broker in order; acknowledged together.
            let mut pending = Vec::with_capacity(queue.len());
            for (_, stream, sealed) in &queue {
                match self.link.send(&self.topics.batch(device, stream), sealed.clone(), false).await {
                    Ok(p) => pending.push(p),
                    Err(e) => {
                        debug!("publishing waits: {e}");
                        break;
                    }
                }
            }
            let results = futures_util::future::join_all(pending.into_iter().map(|p| p.acked())).await;
            // Only the acknowledged prefix leaves the queue, so a peer never sees a later batch twice
            // before an earlier one.
            let done: Vec<i64> =
                queue.iter().zip(&results).take_while(|(_, r)| r.is_ok()).map(|((id, ..), _)| *id).collect();
            if let Err(e) = self.local.published(&done).await {
                error!("cannot update the publish queue: {e}");
            }
            self.stats.published.fetch_add(done.len() as u64, Ordering::Relaxed);
            if done.len() < queue.len() {
                if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                    debug!("publishing waits: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            } else {
                backoff = Duration::from_millis(250);
            }
        }
    }
}

/// Verifies, opens and queues for the store what peers publish.
async fn receive(
    mut inbox: Inbox,
    link: Link,
    mut rx: mpsc::Receiver<Message>,
    notify: Arc<Notify>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut refresh = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = refresh.tick() => {
                if let Err(e) = inbox.refresh_peers(&link).await {
                    warn!("cannot reload peers: {e:#}");
                }
            }
            m = rx.recv() => {
                let Some(m) = m else { return };
                for ev in inbox.handle(&m).await {
                    if let Event::Readings { peer, device, stream, readings, arrival, .. } = &ev {
                        let status = match arrival {
                            crate::share::Arrival::Gap { missing } => format!("verified; {missing} batch(es) before it missing"),
                            _ => "verified".to_string(),
                        };
                        stats.live.received(peer, *device, stream, readings, &status);
                    }
                    if matches!(ev, Event::Readings { .. } | Event::Locked { .. }) {
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        notify.notify_one();
                    }
                    log_event(&ev);
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Moves sealed batches from the outbox to the store, and signs checkpoints.
struct Drainer {
    local: LocalState,
    store: AnyStore,
    identity: Arc<Identity>,
    device: DeviceId,
    retry_max: Duration,
    checkpoint_every: Duration,
    notify: Arc<Notify>,
    sqlite_file: Option<PathBuf>,
    stats: Arc<Stats>,
}

impl Drainer {
    async fn run(self, stop: CancellationToken) {
        self.drain_until_stopped(&stop).await;
        self.store.close().await;
    }

    async fn drain_until_stopped(&self, stop: &CancellationToken) {
        let mut ready = false;
        let mut backoff = Duration::from_millis(250);
        let mut down_since: Option<Instant> = None;
        let mut dirty: BTreeSet<StreamName> = BTreeSet::new();
        let mut last_checkpoint = Instant::now();
        let mut final_deadline: Option<Instant> = None;
        loop {
            let stopping = stop.is_cancelled();
            if stopping && final_deadline.is_none() {
                final_deadline = Some(Instant::now() + FINAL_DRAIN);
            }
            let mut result = self.pass(&mut ready, &mut dirty).await;
            if result.is_ok() && !dirty.is_empty() && (stopping || last_checkpoint.elapsed() >= self.checkpoint_every) {
                result = self.checkpoint(&mut dirty).await;
                last_checkpoint = Instant::now();
            }
            match result {
                Ok(()) => {
                    self.stats.store_down.store(false, Ordering::Relaxed);
                    if let Some(since) = down_since.take() {
                        info!(
                            "the store is reachable again after {}; the outbox is drained",
                            humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
                        );
                    }
                    backoff = Duration::from_millis(250);
                    if stopping {
                        return;
                    }
                }
                Err(e) => {
                    self.stats.store_down.store(true, Ordering::Relaxed);
                    if down_since.is_none() {
                        warn!("cannot store batches: {e}. Keeping them in the local outbox and retrying");
                        down_since = Some(Instant::now());
                    } else {
                        debug!("store still unreachable: {e}");
                    }
                    if final_deadline.is_some_and(|d| Instant::now() + backoff > d) {
                        warn!("stopping while the store is unreachable; the outbox is sent on the next start");
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled(), if !stopping => {}
                    }
                    backoff = (backoff * 2).min(self.retry_max);
                    continue;
                }
            }
            let until_checkpoint =
                self.checkpoint_every.saturating_sub(last_checkpoint.elapsed()).max(Duration::from_millis(100));
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(until_checkpoint) => {}
            }
        }
    }

    async fn pass(&self, ready: &mut bool, dirty: &mut BTreeSet<StreamName>) -> edgeseal_store::Result<()> {
        if !*ready {
            self.store.migrate().await?;
            if let Some(f) = &self.sqlite_file {
                keyfile::make_private(f);
            }
            *ready = true;
        }
        loop {
            let batch = self.local.outbox(self.device, DRAIN_CHUNK).await?;
            if batch.is_empty() {
                return Ok(());
            }
            let (ids, rows): (Vec<i64>, Vec<BatchRow>) = batch.into_iter().unzip();
            let report = self.store.put_batches(&rows).await?;
            let mut rejected = Vec::new();
            for &i in &report.conflicts {
                error!(
                    "the store already holds a different batch {} of {}; this one is kept in state.db (table rejected)",
                    rows[i].seq, rows[i].stream
                );
                rejected.push((ids[i], format!("the store holds a different batch {}", rows[i].seq)));
            }
            let stored: Vec<i64> =
                ids.iter().enumerate().filter(|(i, _)| !report.conflicts.contains(i)).map(|(_, &id)| id).collect();
            self.local.outbox_done(&stored, &rejected).await?;
            self.stats.stored.fetch_add(stored.len() as u64, Ordering::Relaxed);
            // Heads of this agent's streams (received batches were remembered on arrival).
            let mut heads: HashMap<&StreamName, &BatchRow> = HashMap::new();
            for (i, r) in rows.iter().enumerate() {
                if report.conflicts.contains(&i) || r.device != self.device {
                    continue;
                }
                if heads.get(&r.stream).is_none_or(|h| r.seq > h.seq) {
                    heads.insert(&r.stream, r);
                }
            }
            for (stream, r) in heads {
                let head = Head { seq: r.seq, hash: edgeseal_core::envelope::BatchHash(r.hash), ts: r.last_ts };
                self.local.remember(self.device, stream, head).await?;
                dirty.insert(stream.clone());
            }
            debug!("stored {} batches", stored.len());
        }
    }

    async fn checkpoint(&self, dirty: &mut BTreeSet<StreamName>) -> edgeseal_store::Result<()> {
        while let Some(stream) = dirty.first().cloned() {
            if let Some(head) = self.local.remembered(self.device, &stream).await? {
                let cp = Checkpoint {
                    device: self.device,
                    stream: stream.clone(),
                    seq: head.seq,
                    head: head.hash,
                    ts: now_ms(),
                };
                let bytes =
                    cp.sign(&self.identity).map_err(|_| edgeseal_store::Error::BadRow("checkpoint signing failed"))?;
                self.store.put_checkpoint(self.device, &stream, head.seq, &bytes).await?;
                debug!("checkpoint {} of {stream}", head.seq);
            }
            dirty.remove(&stream);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcd_pages_fit_sixteen_columns() {
        let stats = Stats::default();
        let s = |n: &str| StreamName::new(n).unwrap();
        stats.latest.lock().unwrap().insert(s("temperature"), (21.5, "°C".into()));
        stats.latest.lock().unwrap().insert(s("a_very_long_stream_name"), (1023.0, "adc".into()));
        let streams = [s("temperature"), s("a_very_long_stream_name"), s("humidity")];
        let page0 = lcd_lines(&streams, 0, &stats);
        // The value is kept whole; the name gives way.
        assert_eq!(page0, ["temperatur 21.5C".to_string(), "a_very_l 1023adc".to_string()]);
        let page1 = lcd_lines(&streams, 1, &stats);
        assert!(page1[0].starts_with("humidity") && page1[0].ends_with(" -"), "{page1:?}");
        assert!(page0.iter().chain(page1.iter()).all(|l| l.chars().count() <= 16), "{page0:?} {page1:?}");
    }
}
