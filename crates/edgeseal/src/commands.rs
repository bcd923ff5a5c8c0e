//! The commands other than `up` and `bench`.

use std::collections::BTreeMap;
use std::io::{BufWriter, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use edgeseal_core::chain::{Audit, Finding, Scope};
use edgeseal_core::{DeviceId, Readings, StreamName, keystore};
use edgeseal_store::local::LocalState;
use edgeseal_store::reader::{StreamRead, open_rows, read_stream};
use edgeseal_store::{AnyStore, ConnectOptions, Store, TimeRange};
use serde_json::json;

use crate::cli::{BenchCommand, Cli, Command, ConfigCommand, FetchArgs, Format, KeysCommand, SensorsCommand};
use crate::config::{self, Config, Overrides};
use crate::keyfile::{self, PassphraseSource};
use crate::timefmt::{format_ms, now_ms, parse_time};

/// Batches opened and printed at a time by `fetch`.
const FETCH_CHUNK: usize = 1024;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Config { command: ConfigCommand::PrintDefault } = &cli.command {
        print!("{}", config::DEFAULT_TOML);
        return Ok(ExitCode::SUCCESS);
    }
    let mut overrides =
        Overrides { data_dir: cli.global.data_dir.clone(), store: cli.global.store.clone(), ..Default::default() };
    overrides.broker(cli.global.broker.clone());
    match &cli.command {
        Command::Init { name, .. } => overrides.name = name.clone(),
        Command::Broker { run, .. } => {
            overrides.broker = Some(config::BrokerOverrides {
                listen: run.listen.clone(),
                level: run.level,
                mutual_tls: run.mutual_tls,
                dir: run.dir.clone(),
            })
        }
        Command::Up(args) => {
            overrides.name = args.name.clone();
            if args.batch_count.is_some() || args.batch_interval.is_some() {
                overrides.batch =
                    Some(config::BatchOverrides { count: args.batch_count, interval: args.batch_interval.clone() });
            }
        }
        _ => {}
    }
    let cfg = config::load(cli.global.config.as_deref(), &overrides)?;
    let agent = matches!(cli.command, Command::Up(_) | Command::Broker { command: None, .. });
    init_logging(if agent { &cfg.log } else { "warn" });
    let pass = PassphraseSource { file: cli.global.passphrase_file.clone() };
    match cli.command {
        Command::Init { protect, .. } => init(&cfg, &pass, protect),
        Command::Id { json } => id(&cfg, json),
        Command::Up(args) => crate::agent::up(cfg, args, pass).await,
        Command::Streams { json } => streams(&cfg, json).await,
        Command::Fetch(args) => fetch(&cfg, &pass, args).await,
        Command::Verify { stream, device, json } => verify(&cfg, stream, device, json).await,
        Command::Keys { command: KeysCommand::Rotate { stream } } => {
            crate::share_cmd::rotate(&cfg, &pass, &stream).await
        }
        Command::Pair(args) => crate::share_cmd::pair(&cfg, &pass, args).await,
        Command::Peers { json } => crate::share_cmd::peers(&cfg, json).await,
        Command::Share { stream, peer, from } => crate::share_cmd::share(&cfg, &pass, &stream, &peer, from).await,
        Command::Revoke { peer, stream } => crate::share_cmd::revoke(&cfg, &pass, &peer, stream).await,
        Command::Watch { peer, stream, json, run_for } => {
            crate::share_cmd::watch(&cfg, &pass, peer, stream, json, run_for).await
        }
        Command::Config { command: ConfigCommand::Show } => show_config(&cfg),
        Command::Config { command: ConfigCommand::PrintDefault } => unreachable!("handled above"),
        Command::Pki { command } => crate::pki_cmd::pki(&cfg, command),
        Command::Broker { command: Some(command), .. } => crate::pki_cmd::broker(command),
        Command::Broker { command: None, run } => crate::embedded::run(&cfg, run.run_for.as_deref()).await,
        Command::Sensors { command: SensorsCommand::List { json } } => {
            crate::sensors_cmd::list(&cfg, &pass, json).await
        }
        Command::Sensors { command: SensorsCommand::Probe { bus } } => crate::sensors_cmd::probe(&cfg, bus).await,
        Command::Bench { command: BenchCommand::Storage { readings, batch, json } } => {
            crate::bench::storage(readings, batch, json).await
        }
        Command::Bench { command: BenchCommand::Cloudsync { requests, connections, json } } => {
            crate::bench_cloudsync::run(&cfg, requests, connections, json).await
        }
        Command::Bench { command: BenchCommand::Sharing { messages, json } } => {
            crate::bench_sharing::sharing(&cfg, messages, json).await
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},sqlx=warn,mqtt5=warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

fn init(cfg: &Config, pass: &PassphraseSource, protect: bool) -> Result<ExitCode> {
    let (identity, protected) = keyfile::init(&cfg.data_dir, &cfg.name, pass, protect)?;
    let public = identity.public();
    println!("created agent {:?} in {}", cfg.name, cfg.data_dir.display());
    println!("  device id:   {}", public.device_id());
    println!("  fingerprint: {}", public.fingerprint());
    println!(
        "  keystore:    {} (mode 0600, {})",
        keyfile::keystore_path(&cfg.data_dir).display(),
        if protected { "passphrase-protected" } else { "not passphrase-protected" }
    );
    Ok(ExitCode::SUCCESS)
}

/// The agent's public identity, as `id --json` prints it and the API serves it.
pub fn identity_json(cfg: &Config) -> Result<serde_json::Value> {
    let path = keyfile::require_initialised(&cfg.data_dir)?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (name, public) =
        keystore::public(&text).with_context(|| format!("cannot use the keystore {}", path.display()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(json!({
        "name": name,
        "device_id": public.device_id().to_string(),
        "fingerprint": public.fingerprint(),
        "ed25519": b64.encode(public.ed25519),
        "x25519": b64.encode(public.x25519),
    }))
}

fn id(cfg: &Config, json: bool) -> Result<ExitCode> {
    let v = identity_json(cfg)?;
    if json {
        println!("{v}");
    } else {
        let f = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        println!("name:        {}", f("name"));
        println!("device id:   {}", f("device_id"));
        println!("fingerprint: {}", f("fingerprint"));
        println!("ed25519:     {}", f("ed25519"));
        println!("x25519:      {}", f("x25519"));
    }
    Ok(ExitCode::SUCCESS)
}

/// Connects to the configured store and makes sure its schema exists.
pub(crate) async fn open_store(cfg: &Config) -> Result<AnyStore> {
    let store = AnyStore::connect(&cfg.store_url, ConnectOptions { lazy: false, timeout: cfg.store_timeout }).await?;
    store.migrate().await.with_context(|| format!("cannot prepare the store at {}", store.url()))?;
    Ok(store)
}

pub(crate) async fn open_local(cfg: &Config) -> Result<LocalState> {
    keyfile::require_initialised(&cfg.data_dir)?;
    let local = LocalState::open(&cfg.state_path()).await.context("cannot open the local state (state.db)")?;
    keyfile::make_private(&cfg.state_path());
    Ok(local)
}

/// Every stream in the store and what waits locally, as `streams --json` prints them and the API serves them.
pub async fn streams_json(cfg: &Config) -> Result<Vec<serde_json::Value>> {
    let device = keyfile::load_public(&cfg.data_dir)?.1.device_id();
    let local = open_local(cfg).await?;
    let store = open_store(cfg).await?;
    type Rows = BTreeMap<(String, bool, DeviceId), serde_json::Value>;
    let mut rows: Rows = BTreeMap::new();
    for s in store.streams().await? {
        let own = s.device == device;
        rows.insert(
            (s.stream.clone(), !own, s.device),
            json!({
                "stream": s.stream, "device": s.device.to_string(), "own": own, "batches": s.batches,
                "readings": s.readings, "first": format_ms(s.first_ts), "last": format_ms(s.last_ts),
                "head_seq": s.head_seq,
            }),
        );
    }
    // This agent's own streams: sealed, or with readings and batches still waiting locally.
    fn own<'a>(rows: &'a mut Rows, device: DeviceId, name: &str) -> &'a mut serde_json::Value {
        rows.entry((name.to_string(), false, device)).or_insert_with(|| {
            json!({"stream": name, "device": device.to_string(), "own": true, "batches": 0, "readings": 0,
                   "first": null, "last": null, "head_seq": null})
        })
    }
    for (name, st) in local.stream_states().await? {
        let e = own(&mut rows, device, name.as_str());
        e["epoch"] = json!(st.epoch);
        e["pending_readings"] = json!(0);
        e["outbox_batches"] = json!(0);
    }
    for (name, b) in local.backlog().await? {
        let e = own(&mut rows, device, &name);
        if e["epoch"].is_null() {
            e["epoch"] = json!(0);
        }
        e["pending_readings"] = json!(b.pending_readings);
        e["outbox_batches"] = json!(b.outbox_batches);
    }
    local.close().await;
    Ok(rows.into_values().collect())
}

async fn streams(cfg: &Config, json: bool) -> Result<ExitCode> {
    let rows = streams_json(cfg).await?;
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no streams yet (run `edgeseal up`)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<8} {:>8} {:>10} {:<24} {:<24} {:>6} {:>5} {:>8} {:>7}",
        "STREAM", "DEVICE", "BATCHES", "READINGS", "FIRST", "LAST", "HEAD", "EPOCH", "PENDING", "OUTBOX"
    );
    for v in &rows {
        let dev = if v["own"] == json!(true) {
            "this".to_string()
        } else {
            v["device"].as_str().and_then(|d| d.get(..8)).unwrap_or("?").to_string()
        };
        let text = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .or_else(|| v[k].as_u64().map(|n| n.to_string()))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<24} {:<8} {:>8} {:>10} {:<24} {:<24} {:>6} {:>5} {:>8} {:>7}",
            text("stream"),
            dev,
            text("batches"),
            text("readings"),
            text("first"),
            text("last"),
            text("head_seq"),
            text("epoch"),
            text("pending_readings"),
            text("outbox_batches")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_device(arg: Option<&str>, own: DeviceId) -> Result<DeviceId> {
    match arg {
        None => Ok(own),
        Some(s) => s.parse().with_context(|| format!("--device {s:?}")),
    }
}

pub(crate) fn parse_stream(s: &str) -> Result<StreamName> {
    StreamName::new(s).with_context(|| format!("--stream {s:?}"))
}

/// Fetches and audits one stream, remembering any newer authentic head.
async fn audited(
    store: &AnyStore,
    local: &LocalState,
    device: DeviceId,
    stream: &StreamName,
    range: TimeRange,
    scope: Scope,
) -> Result<StreamRead> {
    let remembered = local.remembered(device, stream).await?;
    let read = read_stream(store, device, stream, range, remembered, scope).await?;
    if let Some(head) = read.audit.head {
        local.remember(device, stream, head).await?;
    }
    Ok(read)
}

async fn fetch(cfg: &Config, pass: &PassphraseSource, args: FetchArgs) -> Result<ExitCode> {
    let (_, identity) = keyfile::load(&cfg.data_dir, pass).await?;
    let stream = parse_stream(&args.stream)?;
    let device = parse_device(args.device.as_deref(), identity.device_id())?;
    let now = now_ms();
    let from = args.from.as_deref().map(|t| parse_time(t, now).context("--from")).transpose()?;
    let to = args.to.as_deref().map(|t| parse_time(t, now).context("--to")).transpose()?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        bail!("--from is after --to");
    }
    let local = open_local(cfg).await?;
    let store = open_store(cfg).await?;
    let scope = Scope { from_start: from.is_none(), to_end: to.is_none_or(|t| t >= now) };
    let read = audited(&store, &local, device, &stream, TimeRange { from, to }, scope).await?;
    if read.rows.is_empty() && read.audit.is_clean() {
        eprintln!("no batches of {stream} in that range");
    }
    let problems = !read.audit.is_clean();
    if problems {
        report_findings(&stream, &read.audit);
        if args.strict {
            eprintln!("refusing to print data (--strict)");
            return Ok(ExitCode::from(crate::EXIT_INTEGRITY));
        }
    }
    let bar = (std::io::stdout().is_terminal() && read.rows.len() > 1000).then(|| {
        let b = indicatif::ProgressBar::new(read.rows.len() as u64);
        b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        b
    });
    let ring = crate::share::KeyRing::load(std::sync::Arc::new(identity), &local).await?;
    local.close().await;
    let key = |epoch| ring.key(device, &stream, epoch);
    let mut out = Output::new(args.format, &stream);
    let mut unreadable = 0usize;
    for start in (0..read.rows.len()).step_by(FETCH_CHUNK) {
        let end = (start + FETCH_CHUNK).min(read.rows.len());
        for o in open_rows(&read, start..end, &key).into_iter().flatten() {
            match o {
                Ok(r) => out.batch(&r, from, to)?,
                Err(_) => unreadable += 1,
            }
        }
        if let Some(b) = &bar {
            b.set_position(end as u64);
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    out.finish()?;
    if unreadable > 0 {
        eprintln!(
            "warning: {unreadable} authentic batches could not be opened (no key for their epoch on this agent: not granted, or damaged)"
        );
    }
    if problems {
        eprintln!("warning: printed only the readings of verified batches; see above for what was wrong");
    }
    Ok(ExitCode::SUCCESS)
}

fn report_findings(stream: &StreamName, audit: &Audit) {
    eprintln!("warning: {} problem(s) in stream {stream}:", audit.findings.len());
    for f in &audit.findings {
        eprintln!("  {f}");
    }
}

/// Writes readings as a table, CSV or JSON, streaming.
struct Output<'a> {
    format: Format,
    stream: &'a StreamName,
    w: BufWriter<std::io::StdoutLock<'static>>,
    first: bool,
    wrote_header: bool,
}

impl<'a> Output<'a> {
    fn new(format: Format, stream: &'a StreamName) -> Self {
        Output {
            format,
            stream,
            w: BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
            first: true,
            wrote_header: false,
        }
    }

    fn batch(&mut self, r: &Readings, from: Option<i64>, to: Option<i64>) -> Result<()> {
        let keep = |t: i64| from.is_none_or(|f| t >= f) && to.is_none_or(|e| t <= e);
        let res = match r {
            Readings::Scalar(b) => {
                for i in 0..b.ts.len() {
                    if !keep(b.ts[i]) {
                        continue;
                    }
                    let label = b.labels.get(i).cloned().flatten();
                    self.scalar(b.ts[i], b.values[i], &b.unit, label.as_deref())?;
                }
                Ok(())
            }
            Readings::Blob(b) => {
                for i in 0..b.ts.len() {
                    if keep(b.ts[i]) {
                        self.blob(b.ts[i], &b.media_type, &b.items[i])?;
                    }
                }
                Ok(())
            }
        };
        ignore_broken_pipe(res)
    }

    fn header(&mut self) -> std::io::Result<()> {
        if self.wrote_header {
            return Ok(());
        }
        self.wrote_header = true;
        match self.format {
            Format::Table => writeln!(self.w, "{:<24}  {:>12}  {:<6}  LABEL", "TIME", "VALUE", "UNIT"),
            Format::Csv => writeln!(self.w, "{CSV_HEADER}"),
            Format::Json => write!(self.w, "["),
        }
    }

    fn scalar(&mut self, ts: i64, value: f64, unit: &str, label: Option<&str>) -> std::io::Result<()> {
        self.header()?;
        match self.format {
            Format::Table => {
                let row = format!("{:<24}  {:>12}  {:<6}  {}", format_ms(ts), value, unit, label.unwrap_or(""));
                writeln!(self.w, "{}", row.trim_end())
            }
            Format::Csv => writeln!(
                self.w,
                "{},{},{},{},{},{},,",
                self.stream,
                format_ms(ts),
                ts,
                value,
                csv(unit),
                csv(label.unwrap_or(""))
            ),
            Format::Json => {
                let sep = if std::mem::take(&mut self.first) { "\n" } else { ",\n" };
                write!(self.w, "{sep}{}", scalar_json(self.stream, ts, value, unit, label))
            }
        }
    }

    fn blob(&mut self, ts: i64, media_type: &str, data: &[u8]) -> std::io::Result<()> {
        self.header()?;
        let b64 = base64::engine::general_purpose::STANDARD;
        match self.format {
            Format::Table => writeln!(
                self.w,
                "{:<24}  {:>12}  {:<6}  {media_type}",
                format_ms(ts),
                format!("{} B", data.len()),
                "blob"
            ),
            Format::Csv => {
                writeln!(self.w, "{},{},{},,,,{},{}", self.stream, format_ms(ts), ts, csv(media_type), b64.encode(data))
            }
            Format::Json => {
                let sep = if std::mem::take(&mut self.first) { "\n" } else { ",\n" };
                write!(self.w, "{sep}{}", blob_json(self.stream, ts, media_type, data))
            }
        }
    }

    fn finish(mut self) -> Result<()> {
        let res = (|| {
            if self.format == Format::Json {
                self.header()?;
                writeln!(self.w, "\n]")?;
            }
            self.w.flush()
        })();
        ignore_broken_pipe(res)
    }
}

/// One reading as `fetch --format json` prints it and the API serves it.
fn scalar_json(stream: &StreamName, ts: i64, value: f64, unit: &str, label: Option<&str>) -> serde_json::Value {
    json!({"stream": stream.as_str(), "time": format_ms(ts), "ts_ms": ts, "value": value, "unit": unit, "label": label})
}

fn blob_json(stream: &StreamName, ts: i64, media_type: &str, data: &[u8]) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({"stream": stream.as_str(), "time": format_ms(ts), "ts_ms": ts, "media_type": media_type, "data_base64": b64.encode(data)})
}

/// A time range of a stream, verified and opened: every batch with its
/// verification status, the findings, and the readings of the authentic
/// batches this agent holds keys for (the API's retrieval).
pub async fn read_json(
    cfg: &Config,
    identity: std::sync::Arc<edgeseal_core::keys::Identity>,
    stream: &StreamName,
    device: Option<&str>,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<serde_json::Value> {
    let device = parse_device(device, identity.device_id())?;
    let local = open_local(cfg).await?;
    let store = open_store(cfg).await?;
    let now = now_ms();
    let scope = Scope { from_start: from.is_none(), to_end: to.is_none_or(|t| t >= now) };
    let read = audited(&store, &local, device, stream, TimeRange { from, to }, scope).await?;
    let ring = crate::share::KeyRing::load(identity, &local).await?;
    local.close().await;
    let keep = |t: i64| from.is_none_or(|f| t >= f) && to.is_none_or(|e| t <= e);
    let (mut readings, mut unreadable) = (Vec::new(), 0usize);
    for o in open_rows(&read, 0..read.rows.len(), &|epoch| ring.key(device, stream, epoch)).into_iter().flatten() {
        match o {
            Ok(Readings::Scalar(b)) => readings.extend((0..b.ts.len()).filter(|&i| keep(b.ts[i])).map(|i| {
                scalar_json(stream, b.ts[i], b.values[i], &b.unit, b.labels.get(i).cloned().flatten().as_deref())
            })),
            Ok(Readings::Blob(b)) => readings.extend(
                (0..b.ts.len())
                    .filter(|&i| keep(b.ts[i]))
                    .map(|i| blob_json(stream, b.ts[i], &b.media_type, &b.items[i])),
            ),
            Err(_) => unreadable += 1,
        }
    }
    let batches: Vec<_> = read
        .rows
        .iter()
        .zip(&read.audit.statuses)
        .map(|(r, s)| json!({"seq": r.seq, "first": format_ms(r.first_ts), "last": format_ms(r.last_ts), "status": s.as_str()}))
        .collect();
    Ok(json!({
        "stream": stream.as_str(), "device": device.to_string(), "verified": read.audit.is_clean(),
        "batches": batches, "findings": read.audit.findings.iter().map(finding_json).collect::<Vec<_>>(),
        "readings": readings, "unreadable_batches": unreadable,
    }))
}

fn ignore_broken_pipe(r: std::io::Result<()>) -> Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

/// The columns of `fetch --format csv` and of the API's CSV download.
pub const CSV_HEADER: &str = "stream,time,ts_ms,value,unit,label,media_type,data_base64";

/// One reading of [`read_json`] as a CSV line (no newline).
pub fn csv_line(r: &serde_json::Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or_default();
    let value = r["value"].as_f64().map(|v| v.to_string()).unwrap_or_default();
    format!(
        "{},{},{},{value},{},{},{},{}",
        r["stream"].as_str().unwrap_or_default(),
        s("time"),
        r["ts_ms"].as_i64().unwrap_or_default(),
        csv(s("unit")),
        csv(s("label")),
        csv(s("media_type")),
        s("data_base64")
    )
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

async fn verify(cfg: &Config, stream: Option<String>, device: Option<String>, json: bool) -> Result<ExitCode> {
    let own = keyfile::load_public(&cfg.data_dir)?.1.device_id();
    let device = parse_device(device.as_deref(), own)?;
    let local = open_local(cfg).await?;
    let store = open_store(cfg).await?;
    let streams: Vec<StreamName> = match stream {
        Some(s) => vec![parse_stream(&s)?],
        None => {
            let mut names: Vec<StreamName> = store
                .streams()
                .await?
                .into_iter()
                .filter(|s| s.device == device)
                .filter_map(|s| StreamName::new(s.stream).ok())
                .collect();
            names.extend(local.remembered_streams(device).await?);
            names.sort();
            names.dedup();
            names
        }
    };
    let mut reports = Vec::new();
    let mut problems = 0usize;
    for s in &streams {
        let read = audited(&store, &local, device, s, TimeRange::default(), Scope::WHOLE).await?;
        problems += read.audit.findings.len();
        reports.push((s.clone(), read));
    }
    local.close().await;
    if json {
        let out: Vec<serde_json::Value> = reports
            .iter()
            .map(|(s, r)| {
                let verified = r.audit.statuses.iter().filter(|x| x.is_authentic()).count();
                json!({
                    "stream": s.as_str(),
                    "device": device.to_string(),
                    "batches": r.rows.len(),
                    "verified": verified,
                    "head_seq": r.audit.head.map(|h| h.seq),
                    "ok": r.audit.is_clean(),
                    "findings": r.audit.findings.iter().map(finding_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", json!({"ok": problems == 0, "device": device.to_string(), "streams": out}));
    } else {
        if reports.is_empty() {
            println!("no streams of device {device} in {}", store.url());
        }
        for (s, r) in &reports {
            let verified = r.audit.statuses.iter().filter(|x| x.is_authentic()).count();
            let head = r.audit.head.map_or("-".to_string(), |h| h.seq.to_string());
            if r.audit.is_clean() {
                println!("{s}: ok ({} batches verified, head {head})", verified);
            } else {
                println!(
                    "{s}: {} problem(s) ({verified} of {} batches verified)",
                    r.audit.findings.len(),
                    r.rows.len()
                );
                for f in &r.audit.findings {
                    println!("  {f}");
                }
            }
        }
    }
    Ok(if problems == 0 { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_INTEGRITY) })
}

fn finding_json(f: &Finding) -> serde_json::Value {
    let mut v = json!({"kind": f.kind(), "message": f.to_string()});
    let seqs = match f {
        Finding::Tampered { row_seq, .. } | Finding::Foreign { row_seq, .. } => {
            json!({"seq": row_seq})
        }
        Finding::Moved { row_seq, seq, stream, device } => {
            json!({"seq": row_seq, "original_seq": seq, "original_stream": stream.as_str(), "original_device": device.to_string()})
        }
        Finding::Duplicate { seq, row_seq } | Finding::Reordered { seq, row_seq } => {
            json!({"seq": seq, "stored_as": row_seq})
        }
        Finding::Conflict { seq }
        | Finding::ChainBroken { seq }
        | Finding::Fork { seq }
        | Finding::BadCheckpoint { seq }
        | Finding::Unsigned { seq } => {
            json!({"seq": seq})
        }
        Finding::Gap { from, to } => json!({"from": from, "to": to}),
        Finding::TruncatedTail { last, checkpoint } => {
            json!({"last": last, "checkpoint": checkpoint})
        }
        Finding::Rollback { store_head, seen, .. } => json!({"store_head": store_head, "seen": seen}),
    };
    if let (Some(o), Some(extra)) = (v.as_object_mut(), seqs.as_object()) {
        o.extend(extra.clone());
    }
    v
}

fn show_config(cfg: &Config) -> Result<ExitCode> {
    println!("data_dir = {:?}", cfg.data_dir.display().to_string());
    println!("name = {:?}", cfg.name);
    println!("store = {:?}", edgeseal_store::redact_url(&cfg.store_url));
    println!("store_timeout = {:?}", humantime::format_duration(cfg.store_timeout).to_string());
    println!("log = {:?}", cfg.log);
    println!("batch = {:?}", cfg.batch);
    for (s, p) in &cfg.per_stream {
        println!("streams.{s} = {p:?}");
    }
    println!("outbox.retry_max = {:?}", humantime::format_duration(cfg.retry_max).to_string());
    println!("outbox.checkpoint_every = {:?}", humantime::format_duration(cfg.checkpoint_every).to_string());
    for s in &cfg.sensors {
        println!("sensor = {s:?}");
    }
    Ok(ExitCode::SUCCESS)
}
