//! `pair`, `peers`, `share`, `revoke`, `keys rotate` and `watch`. The
//! commands that change state run here under the data directory's lock, or
//! through the running agent when `up` holds it (see [`crate::writer`]).

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use edgeseal_agent::config::Config;
use edgeseal_agent::control::{self, Request};
use edgeseal_agent::pairing::{Side, client_id, connected, run_pairing};
use edgeseal_agent::service::{Keys, Service};
use edgeseal_agent::share::{Arrival, Event, Inbox, Topics, find_peer};
use edgeseal_agent::times::{format_ms, parse_named};
use edgeseal_agent::views::{GrantView, GrantedView, PairingView, PeerView, RevokedView, RotatedView};
use edgeseal_agent::{Error, now_ms};
use edgeseal_core::pairing::{PairCode, Peer};
use edgeseal_core::{Readings, StreamName};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cli::PairArgs;
use crate::commands::{open, open_secret, parse_stream};
use crate::passphrase::PassphraseSource;
use crate::writer::{Writer, exclusive, writer};

fn confirm(code: String, peer: &Peer) -> Result<(), Error> {
    eprintln!(
        "Comparison code: {code}  (the other agent must show the same; it is {}, fingerprint {})",
        peer.name,
        peer.public.fingerprint()
    );
    eprint!("Do both agents show this code? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| Error::bad(format!("cannot read the answer: {e}")))?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        return Err(Error::PairingFailed("cancelled: the comparison codes were not confirmed".into()));
    }
    Ok(())
}

fn show_code(code: &str, sas: bool) {
    if sas {
        println!("Pairing channel: {code}   on the other agent run: edgeseal pair --sas {code}");
    } else {
        println!("Pairing code: {code}   on the other agent run: edgeseal pair {code}");
    }
    let _ = std::io::stdout().flush();
}

pub async fn pair(cfg: Arc<Config>, pass: &PassphraseSource, args: PairArgs) -> Result<ExitCode> {
    let timeout =
        humantime::parse_duration(&args.timeout).map_err(|_| Error::bad(format!("--timeout {:?}", args.timeout)))?;
    let side = match &args.code {
        None => Side::Host { sas: args.sas },
        Some(text) if args.sas => Side::Join(PairCode::sas(
            text.trim().parse().map_err(|_| Error::bad("with --sas the code is the channel number"))?,
        )),
        Some(text) => Side::Join(text.parse().map_err(|e: edgeseal_core::Error| Error::bad(e.to_string()))?),
    };
    cfg.link_options("check")?;
    let start = std::time::Instant::now();
    let peer: PeerView = match writer(&cfg, "pair")? {
        Writer::Agent(holder) => {
            if args.sas {
                return Err(Error::Busy(format!(
                    "{holder} runs on this data directory and pairs by code only: pair without --sas, or from its web UI"
                ))
                .into());
            }
            let request = match side {
                Side::Join(_) => Request::PairJoin { code: args.code.clone().unwrap_or_default() },
                Side::Host { .. } => {
                    Request::PairHost { wait_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) }
                }
            };
            control::request(&cfg.data_dir, &request, |p| {
                if let PairingView::Waiting { code, .. } = p {
                    show_code(code, false);
                }
            })
            .await?
        }
        Writer::Here(_lock) => {
            let service = open_secret(&cfg, pass).await?;
            let shown = |code: PairCode| show_code(&code.to_string(), code.is_sas());
            let res = async {
                let identity = service.identity()?;
                run_pairing(&cfg, service.local(), identity, service.name(), side, timeout, shown, confirm).await
            }
            .await;
            service.close(Duration::from_secs(1)).await;
            PeerView::new(&res?, Vec::new())
        }
    };
    let pair_ms = start.elapsed().as_millis();
    if args.json {
        println!("{}", serde_json::to_string(&peer)?);
    } else {
        println!(
            "Paired with {} (device {}, fingerprint {}) in {pair_ms} ms",
            peer.name, peer.device_id, peer.fingerprint
        );
        println!("Share a stream with it: edgeseal share STREAM --with {}", peer.name);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn peers(cfg: Arc<Config>, json_out: bool) -> Result<ExitCode> {
    let service = open(&cfg, Keys::Public).await?;
    let peers = service.peers().await;
    service.close(Duration::from_secs(1)).await;
    let peers = peers?;
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{}", serde_json::to_string(&peers)?)?;
    } else {
        print_peers(&mut out, &peers)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `peers` as a table.
fn print_peers(w: &mut impl Write, peers: &[PeerView]) -> std::io::Result<()> {
    if peers.is_empty() {
        return writeln!(
            w,
            "no peers yet: pair with `edgeseal pair` (shows a code) and `edgeseal pair CODE` on the other agent"
        );
    }
    writeln!(w, "{:<16}  {:<32}  {:<29}  GRANTS", "NAME", "DEVICE", "FINGERPRINT")?;
    for p in peers {
        let g: Vec<String> = p
            .grants
            .iter()
            .map(|g| {
                let arrow = if matches!(g, GrantView::Given { .. }) { "→" } else { "←" };
                let revoked = if g.revoked() { " (revoked)" } else { "" };
                format!("{arrow}{}{revoked}", g.stream())
            })
            .collect();
        writeln!(w, "{:<16}  {}  {}  {}", p.name, p.device_id, p.fingerprint, g.join(" "))?;
    }
    Ok(())
}

/// Publishes pending grants when a broker is configured and reachable; says what happened.
async fn publish_grants(cfg: &Config, service: &Service) {
    if !cfg.has_broker() {
        eprintln!("no MQTT broker configured: the grant is stored and `edgeseal up` publishes it once one is set");
        return;
    }
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let res = async {
        let (link, _rx) = connected(cfg.link_options(&client_id("grant"))?, &stop).await?;
        service.publish_grants(&link).await
    }
    .await;
    match res {
        Ok(n) => eprintln!("published {n} grant(s) (retained: peers that are offline get them when they connect)"),
        Err(e) => eprintln!("warning: {e}; the grant is stored and `edgeseal up` publishes it when the broker is back"),
    }
}

/// Runs a state-changing request here (under the lock, then publishing grants) or through the running agent.
async fn change<T: serde::de::DeserializeOwned>(
    cfg: &Arc<Config>,
    pass: &PassphraseSource,
    command: &str,
    request: Request,
    here: impl AsyncFnOnce(&Service) -> Result<T, Error>,
) -> Result<T> {
    match writer(cfg, command)? {
        Writer::Agent(holder) => {
            let done = control::request(&cfg.data_dir, &request, |_| {}).await?;
            eprintln!("done by the running agent, {holder}, which publishes it to peers");
            Ok(done)
        }
        Writer::Here(_lock) => {
            let service = open_secret(cfg, pass).await?;
            let res = here(&service).await;
            if res.is_ok() && service.grants_unpublished().await.unwrap_or(false) {
                publish_grants(cfg, &service).await;
            }
            service.close(Duration::from_secs(1)).await;
            Ok(res?)
        }
    }
}

pub async fn share(
    cfg: Arc<Config>,
    pass: &PassphraseSource,
    stream: &str,
    peer: &str,
    from: Option<String>,
    to: Option<String>,
    new: bool,
) -> Result<ExitCode> {
    let stream = parse_stream(stream)?;
    let now = now_ms();
    let from_ms = parse_named("--from", from.as_deref(), now)?;
    let to_ms = parse_named("--to", to.as_deref(), now)?;
    let request = Request::Grant { peer: peer.to_string(), stream: stream.to_string(), from_ms, to_ms, new };
    let done: GrantedView =
        change(&cfg, pass, "share", request, async |s: &Service| s.grant(peer, &stream, (from_ms, to_ms), new).await)
            .await?;
    let from = from_ms.map_or("now".to_string(), format_ms);
    match to_ms {
        Some(t) => {
            println!("{} may read {stream} from {from} to {} (key epoch {})", done.peer, format_ms(t), done.epoch)
        }
        None => println!("{} may read {stream} from {from} on (key epoch {})", done.peer, done.epoch),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn revoke(cfg: Arc<Config>, pass: &PassphraseSource, peer: &str, stream: Option<String>) -> Result<ExitCode> {
    let streams: Vec<StreamName> = stream.as_deref().map(parse_stream).transpose()?.into_iter().collect();
    let request =
        Request::Revoke { peer: peer.to_string(), streams: streams.iter().map(ToString::to_string).collect() };
    let done: RevokedView =
        change(&cfg, pass, "revoke", request, async |s: &Service| s.revoke(peer, &streams).await).await?;
    for s in &done.revoked {
        println!("revoked {} from {s}: it opens nothing sealed from now on", done.peer);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rotate(cfg: Arc<Config>, pass: &PassphraseSource, stream: &str) -> Result<ExitCode> {
    let stream = parse_stream(stream)?;
    let request = Request::Rotate { stream: stream.to_string() };
    let done: RotatedView =
        change(&cfg, pass, "keys rotate", request, async |s: &Service| s.rotate(&stream).await).await?;
    println!(
        "{stream} now seals under key epoch {}; batches sealed before stay readable with their own epoch's key",
        done.epoch
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn watch(
    cfg: Arc<Config>,
    pass: &PassphraseSource,
    peer: Option<String>,
    stream: Option<String>,
    json_out: bool,
    run_for: Option<String>,
) -> Result<ExitCode> {
    let run_for = run_for
        .map(|d| humantime::parse_duration(&d).map_err(|_| Error::bad(format!("--for {d:?} is not a duration"))))
        .transpose()?;
    let stream = stream.as_deref().map(parse_stream).transpose()?;
    let _lock = exclusive(&cfg, "watch")?;
    let service = open_secret(&cfg, pass).await?;
    let res = watch_with(&cfg, &service, peer, stream, json_out, run_for).await;
    service.close(Duration::from_secs(1)).await;
    res
}

async fn watch_with(
    cfg: &Config,
    service: &Service,
    peer: Option<String>,
    stream: Option<StreamName>,
    json_out: bool,
    run_for: Option<Duration>,
) -> Result<ExitCode> {
    let mut inbox =
        Inbox::new(service.identity()?.clone(), service.local().clone(), Topics::new(&cfg.mqtt.prefix)).await?;
    inbox.limits = cfg.mqtt.tentative;
    // What it receives counts as received for this agent (its heads are remembered), so it goes
    // into the outbox too, for the next `up` to store: watching never costs the store a batch.
    inbox.store = !cfg.stores_through_broker();
    let peers: Vec<_> = inbox.peers().cloned().collect();
    if peers.is_empty() {
        return Err(Error::NoSuchPeer("this agent has no peers yet: pair with `edgeseal pair` first".into()).into());
    }
    let only = peer.as_deref().map(|p| find_peer(&peers, p)).transpose()?.map(|p| p.device);
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let (link, mut rx) = connected(cfg.link_options(&client_id("watch"))?, &stop).await?;
    inbox.subscribe(&link).await?;
    eprintln!("watching {} peer(s) on {}; Ctrl-C to stop", peers.len(), link.url());
    let deadline = run_for.map(|d| tokio::time::Instant::now() + d);
    let mut out = std::io::stdout().lock();
    // "Not granted" is said once per stream, not once per batch.
    let mut locked_said = std::collections::HashSet::new();
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = crate::signals::shutdown_signal() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        };
        for ev in inbox.handle(&msg).await {
            if let Event::Locked { peer, stream, epoch, .. } = &ev
                && !locked_said.insert((peer.clone(), stream.clone(), *epoch))
            {
                continue;
            }
            print_event(&mut out, &ev, only, stream.as_ref(), json_out)?;
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints readings a peer shared, one line (or JSON object, with `at`'s fields) each.
#[allow(clippy::too_many_arguments)]
fn print_readings(
    out: &mut impl Write,
    peer: &str,
    device: edgeseal_core::DeviceId,
    s: &StreamName,
    at: &serde_json::Value,
    readings: &Readings,
    status: &str,
    json_out: bool,
) -> Result<()> {
    let object = |mut v: serde_json::Value| {
        if let (Some(m), Some(extra)) = (v.as_object_mut(), at.as_object()) {
            m.extend(extra.clone());
        }
        v
    };
    match readings {
        Readings::Scalar(b) => {
            for i in 0..b.ts.len() {
                let label = b.labels.get(i).cloned().flatten();
                if json_out {
                    let v = json!({"peer": peer, "device": device.to_string(), "stream": s.as_str(),
                        "time": format_ms(b.ts[i]), "ts_ms": b.ts[i], "value": b.values[i], "unit": b.unit,
                        "label": label, "status": status});
                    writeln!(out, "{}", object(v))?;
                } else {
                    let row = format!(
                        "{:<24}  {:<24}  {:>12} {:<6} {}",
                        format_ms(b.ts[i]),
                        format!("{peer}/{s}"),
                        b.values[i],
                        b.unit,
                        label.unwrap_or_default()
                    );
                    writeln!(out, "{}", row.trim_end())?;
                }
            }
        }
        Readings::Blob(b) => {
            for i in 0..b.ts.len() {
                if json_out {
                    let v = json!({"peer": peer, "device": device.to_string(), "stream": s.as_str(),
                        "time": format_ms(b.ts[i]), "ts_ms": b.ts[i], "media_type": b.media_type,
                        "bytes": b.items[i].len(), "status": status});
                    writeln!(out, "{}", object(v))?;
                } else {
                    let size = format!("{} B", b.items[i].len());
                    writeln!(
                        out,
                        "{:<24}  {:<24}  {size:>12} {}",
                        format_ms(b.ts[i]),
                        format!("{peer}/{s}"),
                        b.media_type
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn print_event(
    out: &mut impl Write,
    ev: &Event,
    only: Option<edgeseal_core::DeviceId>,
    stream: Option<&StreamName>,
    json_out: bool,
) -> Result<()> {
    let wanted = |device: &edgeseal_core::DeviceId, s: &StreamName| {
        only.is_none_or(|d| d == *device) && stream.is_none_or(|x| x == s)
    };
    match ev {
        Event::Readings { peer, device, stream: s, seq, readings, arrival } => {
            if !wanted(device, s) {
                return Ok(());
            }
            if let Arrival::Gap { missing } = arrival {
                eprintln!("warning: {missing} batch(es) of {peer}/{s} before batch {seq} did not arrive");
            }
            let status = match arrival {
                Arrival::Gap { .. } => "verified, after a gap",
                _ => "verified",
            };
            let at = json!({"seq": seq});
            print_readings(out, peer, *device, s, &at, readings, status, json_out)?;
        }
        Event::Live { peer, device, stream: s, pos, readings, .. } => {
            if !wanted(device, s) {
                return Ok(());
            }
            let at = json!({"seq": null, "pos": pos});
            print_readings(out, peer, *device, s, &at, readings, "live", json_out)?;
        }
        Event::Locked { peer, stream, seq, epoch } => {
            eprintln!(
                "{peer}/{stream} from batch {seq}: verified, but sealed under key epoch {epoch}, not granted to this agent"
            )
        }
        Event::Granted { peer, stream, epochs } => eprintln!("{peer} granted {stream} ({epochs} key epoch(s))"),
        Event::Revoked { peer, stream } => eprintln!("{peer} revoked this agent's access to {stream}"),
        Event::Refused { topic, reason } => eprintln!("refused a message on {topic}: {reason}"),
        // `watch` keeps nothing, so it does not ask for what it missed (the agent does).
        Event::Missing { .. } | Event::Repaired { .. } => {}
    }
    Ok(())
}
