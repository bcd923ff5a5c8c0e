//! The commands that read: `init` (and `init --from` / `keys export`), `id`, `streams`, `fetch`, `verify`,
//! `config show`, and the service opening the other commands share. Each
//! opens the agent's service once and prints its typed views with the
//! printers below (table, CSV or JSON over `impl Write`).

use std::io::{BufWriter, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use edgeseal_agent::config::Config;
use edgeseal_agent::datadir;
use edgeseal_agent::service::{Keys, Service, parse_stream_as};
use edgeseal_agent::times::parse_named;
use edgeseal_agent::views::{CSV_HEADER, ReadingView, StreamView};
use edgeseal_agent::{Error, now_ms};
use edgeseal_core::StreamName;
use edgeseal_core::chain::Audit;

use crate::cli::{FetchArgs, Format};
use crate::passphrase::PassphraseSource;

/// Opens the agent's service for a command (once per process).
pub async fn open(cfg: &Arc<Config>, keys: Keys) -> Result<Service, Error> {
    Service::open(cfg.clone(), keys, false).await
}

/// Opens the service with the secret identity (asking for the passphrase if the keystore is protected).
pub async fn open_secret(cfg: &Arc<Config>, pass: &PassphraseSource) -> Result<Service, Error> {
    let (_, identity) = datadir::load(&cfg.data_dir, pass.existing()).await?;
    open(cfg, Keys::Secret(Box::new(identity))).await
}

/// `--stream` as the CLI takes it; the error names the flag.
pub fn parse_stream(s: &str) -> Result<StreamName, Error> {
    parse_stream_as("--stream", s)
}

pub fn init(cfg: &Config, pass: &PassphraseSource, protect: bool) -> Result<ExitCode> {
    let _lock = crate::writer::exclusive(cfg, "init")?;
    datadir::check_new(&cfg.data_dir)?;
    let passphrase = new_passphrase(pass, protect)?;
    let identity = datadir::init(&cfg.data_dir, &cfg.name, passphrase.as_ref())?;
    let public = identity.public();
    println!("created agent {:?} in {}", cfg.name, cfg.data_dir.display());
    println!("  device id:   {}", public.device_id());
    println!("  fingerprint: {}", public.fingerprint());
    println!(
        "  keystore:    {} (mode 0600, {})",
        datadir::keystore_path(&cfg.data_dir).display(),
        if passphrase.is_some() { "passphrase-protected" } else { "not passphrase-protected" }
    );
    Ok(ExitCode::SUCCESS)
}

/// The keystore passphrase for a new keystore, when `--protect` asks for one.
fn new_passphrase(pass: &PassphraseSource, protect: bool) -> Result<Option<datadir::Passphrase>> {
    let passphrase = pass.get(protect.then_some("New keystore passphrase: "), true)?;
    if protect && passphrase.is_none() {
        return Err(Error::bad(
            "--protect needs a passphrase: set EDGESEAL_PASSPHRASE, pass --passphrase-file, or run on a terminal",
        )
        .into());
    }
    Ok(passphrase)
}

/// A backup's passphrase, which there must be.
fn backup_passphrase(backup: &PassphraseSource, prompt: &str, confirm: bool) -> Result<datadir::Passphrase> {
    backup.get(Some(prompt), confirm)?.ok_or_else(|| {
        Error::bad(
            "a backup needs a passphrase: set EDGESEAL_BACKUP_PASSPHRASE, pass --backup-passphrase-file, or run on a terminal",
        )
        .into()
    })
}

/// `keys export --to FILE`: the identity, sealed under a backup passphrase.
pub async fn export(cfg: &Config, pass: &PassphraseSource, to: &Path, backup: &PassphraseSource) -> Result<ExitCode> {
    let (name, identity) = datadir::load(&cfg.data_dir, pass.existing()).await?;
    let passphrase = backup_passphrase(backup, "Backup passphrase: ", true)?;
    let (to_owned, name_c) = (to.to_path_buf(), name.clone());
    tokio::task::spawn_blocking(move || datadir::export(&to_owned, &name_c, &identity, &passphrase))
        .await
        .map_err(|e| Error::Internal(format!("the backup task failed: {e}")))??;
    println!(
        "wrote a backup of agent {name:?}'s keys to {} (mode 0600, sealed under the backup passphrase)",
        to.display()
    );
    println!("  keep it off this device; `edgeseal init --from {}` restores the agent on new hardware", to.display());
    Ok(ExitCode::SUCCESS)
}

/// `init --from FILE`: a new data dir holding the backed-up identity, which
/// continues its streams after what the store holds.
pub async fn restore(
    cfg: &Config,
    pass: &PassphraseSource,
    protect: bool,
    from: &Path,
    backup: &PassphraseSource,
    renamed: bool,
) -> Result<ExitCode> {
    let _lock = crate::writer::exclusive(cfg, "init")?;
    datadir::check_new(&cfg.data_dir)?;
    let passphrase = backup_passphrase(backup, "Backup passphrase: ", false)?;
    let from_owned = from.to_path_buf();
    let (backed_up_name, identity) =
        tokio::task::spawn_blocking(move || datadir::read_backup(&from_owned, &passphrase))
            .await
            .map_err(|e| Error::Internal(format!("the backup task failed: {e}")))??;
    let name = if renamed { cfg.name.clone() } else { backed_up_name };
    let local = new_passphrase(pass, protect)?;
    datadir::restore(&cfg.data_dir, &name, &identity, local.as_ref())?;
    let public = identity.public();
    println!("restored agent {name:?} from {} into {}", from.display(), cfg.data_dir.display());
    println!("  device id:   {}", public.device_id());
    println!("  fingerprint: {}", public.fingerprint());
    println!("  its streams go on after the newest batch the store holds of each");
    Ok(ExitCode::SUCCESS)
}

pub fn id(cfg: &Config, json: bool) -> Result<ExitCode> {
    let (name, public) = datadir::load_public(&cfg.data_dir)?;
    let v = edgeseal_agent::views::IdentityView::new(&name, &public);
    if json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("name:        {}", v.name);
        println!("device id:   {}", v.device_id);
        println!("fingerprint: {}", v.fingerprint);
        println!("ed25519:     {}", v.ed25519);
        println!("x25519:      {}", v.x25519);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn streams(cfg: Arc<Config>, json: bool) -> Result<ExitCode> {
    let service = open(&cfg, Keys::Public).await?;
    let rows = service.streams().await;
    service.close(std::time::Duration::from_secs(1)).await;
    let rows = rows?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&rows)?)?;
    } else {
        print_streams(&mut out, &rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `streams` as a table.
fn print_streams(w: &mut impl Write, rows: &[StreamView]) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(w, "no streams yet (run `edgeseal up`)");
    }
    writeln!(
        w,
        "{:<24} {:<8} {:>8} {:>10} {:<24} {:<24} {:>6} {:>5} {:>8} {:>7}",
        "STREAM", "DEVICE", "BATCHES", "READINGS", "FIRST", "LAST", "HEAD", "EPOCH", "PENDING", "OUTBOX"
    )?;
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for v in rows {
        let dev = if v.own { "this".to_string() } else { v.device.get(..8).unwrap_or("?").to_string() };
        writeln!(
            w,
            "{:<24} {:<8} {:>8} {:>10} {:<24} {:<24} {:>6} {:>5} {:>8} {:>7}",
            v.stream,
            dev,
            v.batches,
            v.readings,
            dash(v.first.clone()),
            dash(v.last.clone()),
            dash(v.head_seq.map(|h| h.to_string())),
            dash(v.epoch.map(|e| e.to_string())),
            dash(v.pending_readings.map(|e| e.to_string())),
            dash(v.outbox_batches.map(|e| e.to_string())),
        )?;
    }
    Ok(())
}

pub async fn fetch(cfg: Arc<Config>, pass: &PassphraseSource, args: FetchArgs) -> Result<ExitCode> {
    let service = open_secret(&cfg, pass).await?;
    let res = fetch_with(&service, args).await;
    service.close(std::time::Duration::from_secs(1)).await;
    res
}

async fn fetch_with(service: &Service, args: FetchArgs) -> Result<ExitCode> {
    let stream = parse_stream(&args.stream)?;
    let now = now_ms();
    let from = parse_named("--from", args.from.as_deref(), now)?;
    let to = parse_named("--to", args.to.as_deref(), now)?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(Error::bad("--from is after --to").into());
    }
    let device = args.device.as_deref();
    let not_granted =
        |device| Error::NoSuchGrant { peer: "this agent".into(), what: format!(" of {stream} of device {device}") };
    if args.strict {
        // Nothing is printed of a range with a problem: read it once to audit it, then again to print.
        let audited = service.stream_readings(&stream, device, from, to, None).await?;
        if !audited.granted {
            return Err(not_granted(audited.device).into());
        }
        if !audited.audit.is_clean() {
            report_findings(&stream, &audited.audit);
            eprintln!("refusing to print data (--strict)");
            return Ok(ExitCode::from(crate::EXIT_INTEGRITY));
        }
    }
    // The rows stream out of the store, are audited as they come, and printed once decided.
    let bar = std::io::stdout().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        b
    });
    let keep = |t: i64| from.is_none_or(|f| t >= f) && to.is_none_or(|e| t <= e);
    let mut out = Printer::new(args.format, BufWriter::with_capacity(1 << 16, std::io::stdout().lock()));
    let (mut unreadable, mut outside, mut printed, mut batches) = (0usize, 0usize, 0usize, 0usize);
    let mut failed: Option<std::io::Error> = None;
    let mut print = |rows: Vec<edgeseal_agent::service::OpenedRow>| {
        batches += rows.len();
        for row in rows {
            match row.readings {
                Some(Ok(r)) => {
                    let views = ReadingView::of_batch(&stream, &r, keep);
                    printed += views.len();
                    if let Err(e) = out.readings(&views) {
                        failed = Some(e);
                        return Err(edgeseal_store::Error::Stopped);
                    }
                }
                // Outside the time granted: not this agent's to read, not damage.
                Some(Err(edgeseal_core::Error::NotGranted)) => outside += 1,
                Some(Err(_)) => unreadable += 1,
                None => {}
            }
        }
        if let Some(b) = &bar {
            b.set_message(format!("{batches} batches"));
        }
        Ok(())
    };
    let read = service.stream_readings(&stream, device, from, to, Some(&mut print)).await;
    if let Some(e) = failed {
        ignore_broken_pipe(Err(e))?;
    }
    let read = read?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    ignore_broken_pipe(out.finish())?;
    let problems = !read.audit.is_clean();
    if !read.granted {
        let e = not_granted(read.device);
        eprintln!("warning: {e}: its batches are verified, but none opens (its owner runs `edgeseal share`)");
    }
    if printed == 0 && !problems && unreadable == 0 && outside == 0 {
        eprintln!("no readings of {stream} in that range");
    }
    // This agent's own readings that are accepted but not in a stored batch yet.
    if read.device == service.device() {
        let waiting =
            service.local().backlog().await.ok().and_then(|b| b.get(stream.as_str()).map(|b| b.pending_readings));
        if let Some(n) = waiting.filter(|&n| n > 0) {
            eprintln!(
                "note: {n} more readings of {stream} are accepted but not stored yet (they go into the store with the next batch; `edgeseal streams` shows them)"
            );
        }
    }
    if outside > 0 {
        eprintln!(
            "note: {outside} batches of {stream} begin before (or after) the time granted to this agent, so they are not shown"
        );
    }
    if unreadable > 0 {
        eprintln!(
            "warning: {unreadable} authentic batches could not be opened (no key for their epoch on this agent: not granted, or damaged)"
        );
    }
    if problems {
        report_findings(&stream, &read.audit);
        eprintln!("warning: printed only the readings of verified batches; see above for what was wrong");
        if args.strict {
            // The store changed between the two reads.
            return Ok(ExitCode::from(crate::EXIT_INTEGRITY));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report_findings(stream: &StreamName, audit: &Audit) {
    eprintln!("warning: {} problem(s) in stream {stream}:", audit.findings.len());
    for f in &audit.findings {
        eprintln!("  {f}");
    }
}

fn ignore_broken_pipe(r: std::io::Result<()>) -> Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

/// Writes readings as a table, CSV or a JSON array, streaming.
pub struct Printer<W: Write> {
    format: Format,
    w: W,
    first: bool,
    wrote_header: bool,
}

impl<W: Write> Printer<W> {
    pub fn new(format: Format, w: W) -> Self {
        Printer { format, w, first: true, wrote_header: false }
    }

    fn header(&mut self) -> std::io::Result<()> {
        if std::mem::replace(&mut self.wrote_header, true) {
            return Ok(());
        }
        match self.format {
            Format::Table => writeln!(self.w, "{:<24}  {:>12}  {:<6}  LABEL", "TIME", "VALUE", "UNIT"),
            Format::Csv => writeln!(self.w, "{CSV_HEADER}"),
            Format::Json => write!(self.w, "["),
        }
    }

    pub fn readings(&mut self, rs: &[ReadingView]) -> std::io::Result<()> {
        for r in rs {
            self.header()?;
            match self.format {
                Format::Table => {
                    let row = match r {
                        ReadingView::Scalar { time, value, unit, label, .. } => {
                            format!("{time:<24}  {value:>12}  {unit:<6}  {}", label.as_deref().unwrap_or(""))
                        }
                        ReadingView::Blob { time, media_type, data_base64, .. } => {
                            let size = format!("{} B", data_base64.len() / 4 * 3 - data_base64.matches('=').count());
                            format!("{time:<24}  {size:>12}  {:<6}  {media_type}", "blob")
                        }
                    };
                    writeln!(self.w, "{}", row.trim_end())?;
                }
                Format::Csv => writeln!(self.w, "{}", r.csv_line())?,
                Format::Json => {
                    let sep = if std::mem::take(&mut self.first) { "\n" } else { ",\n" };
                    write!(self.w, "{sep}{}", serde_json::to_string(r).map_err(std::io::Error::other)?)?;
                }
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        if self.format == Format::Json {
            self.header()?;
            writeln!(self.w, "\n]")?;
        }
        self.w.flush()
    }
}

/// Devices audited at once by `verify --all-devices`.
const VERIFY_PARALLEL: usize = 4;

/// `verify --all-devices`: every device in the store, a line each (or JSON); exit 3 when any has problems.
pub async fn verify_all(cfg: Arc<Config>, json: bool) -> Result<ExitCode> {
    let service = open(&cfg, Keys::Public).await?;
    let report = service.verify_all(VERIFY_PARALLEL).await;
    let names: std::collections::HashMap<String, String> = match service.peers().await {
        Ok(peers) => peers.into_iter().map(|p| (p.device_id, p.name)).collect(),
        Err(_) => Default::default(),
    };
    let me = (service.device().to_string(), service.name().to_string());
    service.close(std::time::Duration::from_secs(1)).await;
    let report = report?;
    let ok = report.iter().all(|d| d.ok);
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&serde_json::json!({"ok": ok, "devices": report}))?)?;
    } else {
        for d in &report {
            let name = if d.device == me.0 {
                format!(" ({}, this agent)", me.1)
            } else {
                names.get(&d.device).map_or(String::new(), |n| format!(" ({n})"))
            };
            let batches: usize = d.streams.iter().map(|s| s.batches).sum();
            let verified: usize = d.streams.iter().map(|s| s.verified).sum();
            let bad: Vec<&str> = d.streams.iter().filter(|s| !s.ok).map(|s| s.stream.as_str()).collect();
            let problems: usize = d.streams.iter().map(|s| s.findings.len()).sum();
            let n = d.streams.len();
            if bad.is_empty() {
                writeln!(out, "{}{name}: ok ({n} streams, {verified} batches verified)", d.device)?;
            } else {
                writeln!(
                    out,
                    "{}{name}: {problems} problem(s) in {} of {n} streams ({}; {verified} of {batches} batches verified): \
                     `edgeseal verify --device {}` says what",
                    d.device,
                    bad.len(),
                    bad.join(", "),
                    d.device
                )?;
            }
        }
        let bad = report.iter().filter(|d| !d.ok).count();
        writeln!(out, "{} devices: {} ok, {bad} with problems", report.len(), report.len() - bad)?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_INTEGRITY) })
}

pub async fn verify(cfg: Arc<Config>, stream: Option<String>, device: Option<String>, json: bool) -> Result<ExitCode> {
    if let Some(s) = &stream {
        parse_stream(s)?;
    }
    let service = open(&cfg, Keys::Public).await?;
    let report = service.verify(stream.as_deref(), device.as_deref()).await;
    let url = service.store_cell().url();
    service.close(std::time::Duration::from_secs(1)).await;
    let report = report?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        if report.streams.is_empty() {
            writeln!(out, "no streams of device {} in {url}", report.device)?;
        }
        for s in &report.streams {
            let head = s.head_seq.map_or("-".to_string(), |h| h.to_string());
            let start = match s.start {
                0 => String::new(),
                n => format!(", from batch {n}: older ones removed under a signed retention record"),
            };
            if s.ok {
                writeln!(out, "{}: ok ({} batches verified, head {head}{start})", s.stream, s.verified)?;
            } else {
                writeln!(
                    out,
                    "{}: {} problem(s) ({} of {} batches verified)",
                    s.stream,
                    s.findings.len(),
                    s.verified,
                    s.batches
                )?;
                for f in &s.findings {
                    writeln!(out, "  {}", f.message)?;
                }
            }
        }
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_INTEGRITY) })
}
