//! `edgeseal up`: the wiring of the running agent. The components are the
//! agent library's; this takes the data directory's lock, opens the service
//! once, binds the listeners, spawns each component on a task tracker with
//! its own shutdown token, and stops them in order: sources, sealer (which
//! seals every open batch), drainer and publisher (a last attempt each), the
//! web server and the control socket, then the embedded broker.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use edgeseal_agent::batching::{describe_policy, kept_policy};
use edgeseal_agent::config::{Config, SensorSpec};
use edgeseal_agent::control::ControlServer;
use edgeseal_agent::datadir;
use edgeseal_agent::runtime::lcd::Lcd;
use edgeseal_agent::runtime::retention::Retention;
use edgeseal_agent::runtime::{FINAL_DRAIN, Pipeline, Stats, broker, resume_from_store, sharing, sources};
use edgeseal_agent::service::{Keys, Service};
use edgeseal_agent::{Error, Result as AgentResult};
use edgeseal_core::StreamName;
use edgeseal_sensors::grovepi::bus::{Answer, Bus, Op};
use edgeseal_web::{Access, CloudSync};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::cli::UpArgs;
use crate::passphrase::PassphraseSource;
use crate::writer::exclusive;

/// The setting that records that `up` has said why the keystore needs a backup.
const BACKUP_WARNED: &str = "keystore_backup_warned";

pub async fn up(cfg: Arc<Config>, args: UpArgs, pass: PassphraseSource) -> Result<ExitCode> {
    let mut cfg = (*cfg).clone();
    if !args.sensors.is_empty() {
        let mut specs = Vec::new();
        for f in &args.sensors {
            specs.extend(SensorSpec::from_flag(f)?);
        }
        cfg.sensors = specs;
    }
    let run_for = args
        .run_for
        .as_deref()
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|_| Error::bad(format!("--for {s:?} is not a duration (e.g. 30s, 10m)")))
        })
        .transpose()?;
    // One writer per data directory: a second `up`, or `watch`, is refused and named.
    let _lock = exclusive(&cfg, "up")?;

    let identity = if datadir::keystore_path(&cfg.data_dir).exists() {
        datadir::load(&cfg.data_dir, pass.existing()).await?.1
    } else {
        let id = datadir::init(&cfg.data_dir, &cfg.name, None)?;
        println!(
            "created a new agent in {} (keystore {}, mode 0600)",
            cfg.data_dir.display(),
            datadir::keystore_path(&cfg.data_dir).display()
        );
        id
    };
    let embedded = start_embedded(&mut cfg).await?;
    if cfg.stores_through_broker() && cfg.mqtt.broker.is_none() {
        return Err(Error::Config(
            "store = \"broker\" hands every batch to ingest through a broker, and the embedded one did not start (above): set mqtt.broker, or free its port".into(),
        )
        .into());
    }
    let cfg = Arc::new(cfg);
    let mut service = Service::open(cfg.clone(), Keys::Secret(Box::new(identity)), true).await?;
    let identity = service.identity()?.clone();
    let device = identity.device_id();
    let mut local = service.local().clone();
    if cfg.mqtt.broker.is_some() {
        local.enable_publishing();
    }
    if !cfg.stores_through_broker() {
        resume_from_store(service.store_cell(), &local, device, cfg.store_timeout).await;
    }

    let bus = if cfg.uses_grovepi() {
        let spec = cfg.grovepi_bus.clone();
        let opened = tokio::task::spawn_blocking(move || Bus::open(&spec)).await;
        Some(opened.map_err(|e| Error::Internal(e.to_string()))?.map_err(|e| Error::Config(e.to_string()))?)
    } else {
        None
    };
    let stats = Arc::new(Stats::default());
    let (readings_tx, readings_rx) = mpsc::channel(edgeseal_agent::runtime::sealer::JOURNAL_MAX);
    let sources = sources::build(&cfg, bus.as_ref(), &readings_tx, &stats)?;
    drop(readings_tx);
    // An agent that only receives from peers runs until stopped, not until its (no) sensors finish.
    let stop_when_sources_end = !sources.is_empty() || cfg.mqtt.broker.is_none();
    println!("edgeseal up: agent {:?}, device {device}, fingerprint {}", service.name(), service.fingerprint());
    println!("  data dir: {}", cfg.data_dir.display());
    match cfg.stores_through_broker() {
        true => println!(
            "  store:    through the broker: `edgeseal ingest` stores the batches; each waits in the outbox until acknowledged"
        ),
        false => println!("  store:    {}", service.store_cell().url()),
    }
    if let Some(bus) = &bus
        && let Ok(Answer::Version(a, b, c)) = bus.call(Op::Version)
    {
        println!("  grovepi:  firmware {a}.{b}.{c} on {}", bus.name());
    }
    if sources.is_empty() {
        println!("  sensors:  none");
    }
    for s in &sources {
        println!("  sensor:   {}", s.describe());
    }
    // Once per data dir: what losing the keystore means, and the remedy.
    if local.setting(BACKUP_WARNED).await.ok().flatten().is_none() {
        warn!(
            "without keystore.json every batch this agent stores can never be read again: keep a backup elsewhere (`edgeseal keys export --to FILE`; `edgeseal init --from FILE` restores it)"
        );
        let _ = local.put_setting(BACKUP_WARNED, "1").await;
    }
    // A policy set from the web UI or API outlasts restarts; flags on the command line win over it.
    let flags = args.batch_count.is_some() || args.batch_interval.is_some();
    let mut policy = cfg.batch;
    let from_ui = match kept_policy(&local).await {
        Some(p) if p != cfg.batch && !flags => {
            policy = p;
            " (set from the web UI or API; it overrides batch.count and batch.interval of the configuration)"
        }
        _ => "",
    };
    println!("  batches:  {}{from_ui}", describe_policy(policy));
    // Whole days as days ("400d", as written), not as humantime's years of 365.25 days.
    let keep = |k: Option<Duration>| match k {
        None => "for ever".to_string(),
        Some(k) if k.as_secs() % 86_400 == 0 => format!("{}d", k.as_secs() / 86_400),
        Some(k) => humantime::format_duration(k).to_string(),
    };
    let mut kept: Vec<String> = cfg.keep.per_stream.iter().map(|(s, k)| format!("{s} {}", keep(*k))).collect();
    kept.sort();
    let others = if kept.is_empty() { String::new() } else { format!(" ({})", kept.join(", ")) };
    println!("  keep:     {} in the store{others}", keep(cfg.keep.default));
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
        let streams: Vec<&str> = cfg.lcd.streams.iter().map(StreamName::as_str).collect();
        println!("  lcd:      {} every {}", streams.join(", "), humantime::format_duration(cfg.lcd.refresh));
    }

    // The components, each with its own token, stopped in order below.
    let (sources_stop, sealer_stop, drain_stop, serve_stop) =
        (CancellationToken::new(), CancellationToken::new(), CancellationToken::new(), CancellationToken::new());
    // Every component runs on `tasks`; the handles below give the order in which they stop.
    let tasks = TaskTracker::new();
    let source_tasks = TaskTracker::new();
    for s in sources {
        source_tasks.spawn(s.run(sources_stop.clone()));
    }
    source_tasks.close();
    let lcd = match (&bus, cfg.lcd.enabled) {
        (Some(bus), true) => Some(
            tasks.spawn(Lcd { bus: bus.clone(), cfg: cfg.lcd.clone(), stats: stats.clone() }.run(sources_stop.clone())),
        ),
        _ => None,
    };
    let Pipeline { sealer, drainer, wake, commands, frames } =
        Pipeline::new(&service, &local, policy, &stats, readings_rx)?;
    let sealer = tasks.spawn(sealer.run(sealer_stop.clone()));
    service.attach_sealer(commands, policy);
    let service = Arc::new(service);
    // A device that keeps no store hands its batches over through the broker instead.
    let drainer = (!cfg.stores_through_broker()).then(|| tasks.spawn(drainer.run(drain_stop.clone())));
    let retention = Retention {
        local: local.clone(),
        identity: identity.clone(),
        keep: cfg.keep.clone(),
        every: cfg.retention_every,
        store: (!cfg.stores_through_broker()).then(|| service.store_cell().clone()),
    };
    tasks.spawn(retention.run(drain_stop.clone()));

    let serving = TaskTracker::new();
    let cloudsync = CloudSync::new(cfg.mqtt.clone());
    serve_web(&cfg, &service, &stats, &cloudsync, &serving, &serve_stop).await?;
    match ControlServer::bind(&cfg.data_dir, service.clone()) {
        Ok(control) => {
            serving.spawn(control.run(serve_stop.clone()));
        }
        Err(e) => warn!(
            "{e}; `edgeseal share`, `revoke`, `keys rotate` and `pair` cannot reach this agent while it runs (use its web UI or API)"
        ),
    }
    let sharing_tasks = TaskTracker::new();
    if cfg.mqtt.broker.is_some() {
        let sharing = sharing::connect(
            &cfg,
            identity.clone(),
            local.clone(),
            &wake,
            frames,
            service.store_cell().clone(),
            stats.clone(),
        )
        .await?;
        sharing_tasks.spawn(sharing.publisher.run(drain_stop.clone()));
        sharing_tasks.spawn(sharing.frames.run(drain_stop.clone()));
        sharing_tasks.spawn(sharing.receiver.run(drain_stop.clone()));
        if let Some(h) = sharing.handover {
            sharing_tasks.spawn(h.run(drain_stop.clone()));
        }
    }
    sharing_tasks.close();
    println!("Stop with Ctrl-C: every reading taken is sealed and stored first.");

    tokio::select! {
        _ = crate::signals::shutdown_signal() => info!("signal received; stopping"),
        _ = crate::signals::sleep_opt(run_for) => info!("--for elapsed; stopping"),
        _ = source_tasks.wait(), if stop_when_sources_end => info!("every sensor has finished; stopping"),
    }
    sources_stop.cancel();
    source_tasks.wait().await;
    if let Some(lcd) = lcd {
        let _ = lcd.await;
    }
    sealer_stop.cancel();
    let sealed = sealer.await;
    drain_stop.cancel();
    if let Some(drainer) = drainer
        && tokio::time::timeout(FINAL_DRAIN + Duration::from_secs(5), drainer).await.is_err()
    {
        warn!("the store did not answer in time at shutdown; batches wait in the outbox");
    }
    if tokio::time::timeout(FINAL_DRAIN + Duration::from_secs(5), sharing_tasks.wait()).await.is_err() {
        warn!("the broker did not acknowledge in time at shutdown; batches wait in the publish queue");
    }
    serve_stop.cancel();
    serving.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), serving.wait()).await;
    cloudsync.shutdown(Duration::from_secs(2)).await;
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await.is_err() {
        warn!("some of the agent's tasks did not end in time");
    }
    let backlog = service.local().backlog().await.unwrap_or_default();
    service.close(Duration::from_secs(2)).await;
    if let Some(b) = embedded {
        let _ = tokio::time::timeout(Duration::from_secs(10), b.stop()).await;
    }
    let waiting: u64 = backlog.values().map(|b| b.outbox_batches).sum();
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let shared = match cfg.mqtt.broker {
        Some(_) => {
            let frames = match (n(&stats.frames_sent), n(&stats.frames_dropped)) {
                (0, 0) => String::new(),
                (sent, 0) => format!(" ({sent} live frames)"),
                (sent, dropped) => format!(" ({sent} live frames; {dropped} commits went without one)"),
            };
            let refused = match n(&stats.refused_received) {
                0 => String::new(),
                r => format!(", {r} messages from peers refused (see the log)"),
            };
            format!(", {} published{frames}, {} received from peers{refused}", n(&stats.published), n(&stats.received))
        }
        None => String::new(),
    };
    let refused = match n(&stats.refused) {
        0 => String::new(),
        r => format!(", {r} refused (they could not be sealed; see the log)"),
    };
    println!(
        "stopped: {} readings accepted{refused}, {} read errors, {} batches sealed, {} stored{shared}{}",
        n(&stats.accepted),
        n(&stats.read_errors),
        n(&stats.sealed),
        n(&stats.stored),
        match (waiting, cfg.stores_through_broker()) {
            (0, _) => String::new(),
            (_, false) => format!(", {waiting} waiting in the local outbox for the store"),
            (_, true) => format!(", {waiting} waiting in the local outbox for an ingest's acknowledgement"),
        }
    );
    match sealed {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Error::Internal(format!("the sealer stopped unexpectedly: {e}")).into()),
    }
}

/// Binds `web.listen` (and `web.cloudsync_listen`) and serves the UI and APIs there.
/// A taken port is reported and skipped.
async fn serve_web(
    cfg: &Config,
    service: &Arc<Service>,
    stats: &Arc<Stats>,
    cloudsync: &Arc<CloudSync>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> AgentResult<()> {
    // Other machines need the API token (made whenever any address is not loopback); this
    // machine's clients do not, as with the original.
    let token = match cfg.web_listen.iter().any(|a| !a.ip().is_loopback()) {
        true => Some(datadir::api_token(&cfg.data_dir)?),
        false => None,
    };
    let access = Arc::new(Access::new(token.as_ref().map(|(t, _)| t.clone())));
    let tls = cfg
        .web_tls
        .as_ref()
        .map(|t| edgeseal_web::tls::server_config(t, &cfg.data_dir, &cfg.web_listen))
        .transpose()?;
    // The CloudSync port stays plain HTTP, as the original's clients speak it.
    let (mut listeners, mut plain) = (Vec::new(), Vec::new());
    for &addr in &cfg.web_listen {
        let is_plain = tls.is_none() || cfg.cloudsync_listen == Some(addr);
        let scheme = if is_plain { "http" } else { "https" };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                eprintln!("warning: {addr} is already in use, so the web server does not listen there (web.listen)");
                continue;
            }
            Err(e) => return Err(Error::Config(format!("the web server cannot listen on {addr}: {e}"))),
        };
        let bound = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
        println!("  web:      {scheme}://{bound}/ (API: /api/v1/, CloudSync: /api/v1/orchestration/cloudsyncmgr/)");
        if let (false, Some((_, path))) = (bound.ip().is_loopback(), &token) {
            println!(
                "            other machines sign in with (or send Authorization: Bearer) the token in {}",
                path.display()
            );
        }
        if is_plain { plain.push(listener) } else { listeners.push(listener) }
    }
    if listeners.is_empty() && plain.is_empty() {
        return Ok(());
    }
    if let Some(t) = &tls {
        println!("            certificate SHA-256 {}", t.fingerprint);
        if let Some(ca) = &t.ca {
            println!("            made by this agent: clients trust {} (curl --cacert, or import it)", ca.display());
        }
    }
    let state = edgeseal_web::State {
        service: service.clone(),
        live: stats.live.clone(),
        access,
        cloudsync: cloudsync.clone(),
        stats: stats.clone(),
        tls_fingerprint: tls.as_ref().map(|t| t.fingerprint.clone()),
    };
    let router = edgeseal_web::router(state);
    if let Some(t) = tls {
        tasks.spawn(edgeseal_web::serve(listeners, router.clone(), Some(t.config), stop.clone()));
    }
    tasks.spawn(edgeseal_web::serve(plain, router, None, stop.clone()));
    Ok(())
}

/// Starts the embedded broker when `[broker]` asks for one and no other is
/// configured, and points `cfg.mqtt` at it. A taken port is reported, with
/// what to do, and the agent runs on without sharing.
async fn start_embedded(cfg: &mut Config) -> AgentResult<Option<Box<dyn edgeseal_mqtt::broker::Broker>>> {
    let Some(e) = cfg.embedded.clone().filter(|_| cfg.mqtt.broker.is_none()) else {
        return Ok(None);
    };
    match broker::start(&e).await {
        Ok((b, written)) => {
            crate::broker_cmd::say_written(&written);
            cfg.mqtt = cfg.mqtt.for_embedded(b.url(), &e);
            Ok(Some(b))
        }
        Err(err) if broker::is_port_taken(&err) => {
            eprintln!(
                "warning: the embedded broker did not start: {err}. This agent stores but does not share; {}.",
                broker::port_taken_help(&e)
            );
            // Nor does it pair through whatever holds the port (the web UI and API read this).
            cfg.embedded = None;
            Ok(None)
        }
        Err(err) => Err(err),
    }
}
