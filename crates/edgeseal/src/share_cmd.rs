//! `pair`, `peers`, `share`, `revoke`, `keys rotate` and `watch`.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use edgeseal_core::keys::Identity;
use edgeseal_core::pairing::{self, Host, Joiner, PairCode, Peer};
use edgeseal_core::{Readings, StreamName};
use edgeseal_mqtt::link::{Link, LinkOptions, Message};
use edgeseal_store::local::{LocalState, PeerRow};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::PairArgs;
use crate::commands::{open_local, parse_stream};
use crate::config::Config;
use crate::keyfile::{self, PassphraseSource};
use crate::share::{Arrival, Event, Grants, Inbox, Topics, find_peer, rng};
use crate::timefmt::{format_ms, now_ms, parse_time};

/// How long a command waits for the broker to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long each step after the first message may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

fn client_id(kind: &str) -> String {
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    format!("edgeseal-{kind}-{}", hex::encode(r))
}

/// Connects for a short command; waits (up to `CONNECT_TIMEOUT`) until the broker answers.
async fn connect(cfg: &Config, kind: &str, stop: &CancellationToken) -> Result<(Link, mpsc::Receiver<Message>)> {
    connected(cfg.link_options(&client_id(kind))?, stop).await
}

/// Starts a link and waits (up to `CONNECT_TIMEOUT`) until the broker answers.
pub(crate) async fn connected(opts: LinkOptions, stop: &CancellationToken) -> Result<(Link, mpsc::Receiver<Message>)> {
    let url = opts.url.clone();
    let (link, rx) = Link::start(opts, stop.clone())?;
    let mut up = link.connected();
    tokio::time::timeout(CONNECT_TIMEOUT, up.wait_for(|c| *c))
        .await
        .map_err(|_| anyhow!("cannot reach the MQTT broker {url} (waited {}s)", CONNECT_TIMEOUT.as_secs()))?
        .map_err(|_| anyhow!("the connection to {url} ended"))?;
    Ok((link, rx))
}

/// The next non-empty message on `topic`, or a clear error after `timeout`.
async fn next_on(
    rx: &mut mpsc::Receiver<Message>,
    topic: &str,
    timeout: Duration,
    waiting_for: &str,
) -> Result<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => bail!(
                "pairing failed: timed out after {} waiting for {waiting_for}",
                humantime::format_duration(timeout)
            ),
            Ok(None) => bail!("pairing failed: the broker connection closed"),
            Ok(Some(m)) if m.topic == topic && pairing::is_abort(&m.payload) => {
                bail!("pairing failed: the other agent gave up (a different code, or the messages were altered)")
            }
            Ok(Some(m)) if m.topic == topic && !m.payload.is_empty() => return Ok(m.payload),
            Ok(Some(_)) => {}
        }
    }
}

fn confirm(code: String, peer: &Peer) -> Result<()> {
    eprintln!(
        "Comparison code: {code}  (the other agent must show the same; it is {}, fingerprint {})",
        peer.name,
        peer.public.fingerprint()
    );
    eprint!("Do both agents show this code? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the answer")?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        bail!("pairing cancelled: the comparison codes were not confirmed");
    }
    Ok(())
}

/// Which side of a pairing this agent takes.
pub(crate) enum Side {
    /// Shows a code (a random one, or with `sas` a short channel number and a comparison code).
    Host { sas: bool },
    /// Enters the code the other agent shows.
    Join(PairCode),
}

/// Pairs over the broker `cfg` names and records the peer in state.db. `shown`
/// is told the code to show (hosting); `confirm` is asked about the comparison
/// code when it is short (`--sas`). A failure tells the other side, so it stops waiting.
pub(crate) async fn run_pairing(
    cfg: &Config,
    identity: &Identity,
    name: &str,
    side: Side,
    timeout: Duration,
    shown: impl FnOnce(PairCode),
    confirm: impl FnOnce(String, &Peer) -> Result<()>,
) -> Result<PeerRow> {
    cfg.link_options("check")?;
    let local = open_local(cfg).await?;
    let topics = Topics::new(&cfg.mqtt.prefix);
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let (link, mut rx) = connect(cfg, "pair", &stop).await?;
    let mut abort_on: Option<String> = None;
    let result: Result<pairing::Paired> = async {
        let paired = match side {
            Side::Host { sas } => {
                let code = if sas {
                    let mut b = [0u8; 2];
                    getrandom::fill(&mut b).map_err(|e| anyhow!("no system randomness: {e}"))?;
                    PairCode::sas(1 + u16::from_le_bytes(b) % 999)
                } else {
                    PairCode::random(&mut rng())
                };
                let (mine, theirs) = (topics.pair(code.channel, "host"), topics.pair(code.channel, "joiner"));
                abort_on = Some(mine.clone());
                link.subscribe(&theirs).await?;
                // Once this is acknowledged the broker has handled the subscription before it.
                link.publish(&mine, Vec::new(), false).await?;
                let host = Host::new(code, &mut rng());
                shown(code);
                let m1 = next_on(&mut rx, &theirs, timeout, "the other agent to enter the code").await?;
                let (host, m2) = host.answer(&m1, identity, name)?;
                link.publish(&mine, m2, false).await?;
                let m3 = next_on(&mut rx, &theirs, STEP_TIMEOUT, "the other agent's identity").await?;
                let (paired, m4) = host.finish(&m3)?;
                if code.is_sas() {
                    confirm(paired.comparison_code(), &paired.peer)?;
                }
                link.publish(&mine, m4, false).await?;
                paired
            }
            Side::Join(code) => {
                let (mine, theirs) = (topics.pair(code.channel, "joiner"), topics.pair(code.channel, "host"));
                abort_on = Some(mine.clone());
                link.subscribe(&theirs).await?;
                let (joiner, m1) = Joiner::new(code, &mut rng());
                link.publish(&mine, m1, false).await?;
                let m2 = next_on(&mut rx, &theirs, STEP_TIMEOUT, "the agent that showed the code").await?;
                let (joiner, m3) = joiner.confirm(&m2, identity, name)?;
                if code.is_sas() {
                    confirm(joiner.comparison_code(), joiner.peer())?;
                }
                link.publish(&mine, m3, false).await?;
                let m4 = next_on(&mut rx, &theirs, STEP_TIMEOUT, "the other agent to accept").await?;
                joiner.finish(&m4)?
            }
        };
        Ok(paired)
    }
    .await;
    let paired = match result {
        Ok(p) => p,
        Err(e) => {
            if let Some(topic) = abort_on {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), link.publish(&topic, pairing::abort_message(), false))
                        .await;
            }
            local.close().await;
            return Err(e);
        }
    };
    let peer = PeerRow {
        device: paired.peer.public.device_id(),
        name: paired.peer.name.clone(),
        public: paired.peer.public,
        paired_ms: now_ms(),
    };
    let added = local.add_peer(&peer).await;
    local.close().await;
    added?;
    Ok(peer)
}

pub async fn pair(cfg: &Config, pass: &PassphraseSource, args: PairArgs) -> Result<ExitCode> {
    let timeout = humantime::parse_duration(&args.timeout).map_err(|_| anyhow!("--timeout {:?}", args.timeout))?;
    let side = match &args.code {
        None => Side::Host { sas: args.sas },
        Some(text) if args.sas => Side::Join(PairCode::sas(
            text.trim().parse().map_err(|_| anyhow!("with --sas the code is the channel number"))?,
        )),
        Some(text) => Side::Join(text.parse().map_err(|e| anyhow!("{e}"))?),
    };
    cfg.link_options("check")?;
    let (name, identity) = keyfile::load(&cfg.data_dir, pass).await?;
    let start = std::time::Instant::now();
    let shown = |code: PairCode| {
        if code.is_sas() {
            println!("Pairing channel: {code}   on the other agent run: edgeseal pair --sas {code}");
        } else {
            println!("Pairing code: {code}   on the other agent run: edgeseal pair {code}");
        }
        let _ = std::io::stdout().flush();
    };
    let peer = run_pairing(cfg, &identity, &name, side, timeout, shown, confirm).await?;
    let pair_ms = start.elapsed().as_millis();
    if args.json {
        println!("{}", peer_json(&peer, &[]));
    } else {
        println!(
            "Paired with {} (device {}, fingerprint {}) in {pair_ms} ms",
            peer.name,
            peer.device,
            peer.public.fingerprint()
        );
        println!("Share a stream with it: edgeseal share STREAM --with {}", peer.name);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn peer_json(p: &PeerRow, grants: &[serde_json::Value]) -> serde_json::Value {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "name": p.name,
        "device_id": p.device.to_string(),
        "fingerprint": p.public.fingerprint(),
        "ed25519": b64.encode(p.public.ed25519),
        "x25519": b64.encode(p.public.x25519),
        "paired": format_ms(p.paired_ms),
        "grants": grants,
    })
}

/// Paired peers with the grants each way, as `peers --json` prints them and the API serves them.
pub async fn peers_json(cfg: &Config) -> Result<Vec<serde_json::Value>> {
    keyfile::require_initialised(&cfg.data_dir)?;
    let local = open_local(cfg).await?;
    let peers = local.peers().await?;
    let grants = local.grants_out().await?;
    let received = local.grants_in().await?;
    local.close().await;
    let grants_of = |p: &PeerRow| -> Vec<serde_json::Value> {
        let given = grants.iter().filter(|g| g.peer == p.device).map(|g| {
            json!({"direction": "given", "stream": g.stream.as_str(), "from": format_ms(g.from_ms),
                   "revoked": g.revoked, "published": g.published})
        });
        let got = received.iter().filter(|(o, ..)| *o == p.device).map(
            |(_, s, _, revoked)| json!({"direction": "received", "stream": s.as_str(), "revoked": revoked.is_some()}),
        );
        given.chain(got).collect()
    };
    Ok(peers.iter().map(|p| peer_json(p, &grants_of(p))).collect())
}

pub async fn peers(cfg: &Config, json_out: bool) -> Result<ExitCode> {
    let peers = peers_json(cfg).await?;
    if json_out {
        println!("{}", serde_json::Value::Array(peers));
        return Ok(ExitCode::SUCCESS);
    }
    if peers.is_empty() {
        println!("no peers yet: pair with `edgeseal pair` (shows a code) and `edgeseal pair CODE` on the other agent");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<16}  {:<32}  {:<29}  GRANTS", "NAME", "DEVICE", "FINGERPRINT");
    for p in &peers {
        let g: Vec<String> = p["grants"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| {
                let arrow = if g["direction"] == "given" { "→" } else { "←" };
                let revoked = if g["revoked"] == true { " (revoked)" } else { "" };
                format!("{arrow}{}{revoked}", g["stream"].as_str().unwrap_or_default())
            })
            .collect();
        let field = |k: &str| p[k].as_str().unwrap_or_default().to_string();
        println!("{:<16}  {}  {}  {}", field("name"), field("device_id"), field("fingerprint"), g.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Publishes pending grants when a broker is configured and reachable; says what happened.
async fn publish_grants(cfg: &Config, identity: &Identity) -> Result<()> {
    if !cfg.has_broker() {
        eprintln!("no MQTT broker configured: the grant is stored and `edgeseal up` publishes it once one is set");
        return Ok(());
    }
    let local = open_local(cfg).await?;
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let res = async {
        let (link, _rx) = connect(cfg, "grant", &stop).await?;
        Grants { identity, local: &local }.publish(&link, &Topics::new(&cfg.mqtt.prefix)).await
    }
    .await;
    local.close().await;
    match res {
        Ok(n) => eprintln!("published {n} grant(s) (retained: peers that are offline get them when they connect)"),
        Err(e) => {
            eprintln!("warning: {e:#}; the grant is stored and `edgeseal up` publishes it when the broker is back")
        }
    }
    Ok(())
}

/// Lets `peer` (name, device id or fingerprint) read `stream` from `from_ms` (default now) on;
/// the grant is stored, and published by `up` or [`publish_grants`]. Returns the peer and the key epoch.
pub(crate) async fn give(
    cfg: &Config,
    identity: &Identity,
    stream: &StreamName,
    peer: &str,
    from_ms: Option<i64>,
) -> Result<(PeerRow, u32)> {
    let local = open_local(cfg).await?;
    let res = async {
        let peers = local.peers().await?;
        let peer = find_peer(&peers, peer)?.clone();
        let epoch = Grants { identity, local: &local }.share(&peer, stream, from_ms).await?;
        Ok((peer, epoch))
    }
    .await;
    local.close().await;
    res
}

/// Revokes `peer`'s grants of `streams` (all when empty); returns the peer and the streams revoked.
pub(crate) async fn take_back(
    cfg: &Config,
    identity: &Identity,
    peer: &str,
    streams: &[StreamName],
) -> Result<(PeerRow, Vec<StreamName>)> {
    let local = open_local(cfg).await?;
    let res = async {
        let peers = local.peers().await?;
        let peer = find_peer(&peers, peer)?.clone();
        let done = Grants { identity, local: &local }.revoke(&peer, streams).await?;
        if done.is_empty() {
            let what = streams.iter().map(|s| format!(" of {s}")).collect::<String>();
            bail!("{} holds no grant{what}", peer.name);
        }
        Ok((peer, done))
    }
    .await;
    local.close().await;
    res
}

/// Seals `stream` under a new key epoch from now on; returns the epoch.
pub(crate) async fn rotate_key(cfg: &Config, identity: &Identity, stream: &StreamName) -> Result<u32> {
    let local = open_local(cfg).await?;
    let res = Grants { identity, local: &local }.rotate(stream).await;
    local.close().await;
    res
}

pub async fn share(
    cfg: &Config,
    pass: &PassphraseSource,
    stream: &str,
    peer: &str,
    from: Option<String>,
) -> Result<ExitCode> {
    let stream = parse_stream(stream)?;
    let from_ms = from.as_deref().map(|t| parse_time(t, now_ms()).context("--from")).transpose()?;
    let (_, identity) = keyfile::load(&cfg.data_dir, pass).await?;
    let (peer, epoch) = give(cfg, &identity, &stream, peer, from_ms).await?;
    match from_ms {
        Some(t) => println!("{} may read {stream} from {} on (key epochs up to {epoch})", peer.name, format_ms(t)),
        None => println!("{} may read {stream} from now on (key epoch {epoch})", peer.name),
    }
    publish_grants(cfg, &identity).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn revoke(cfg: &Config, pass: &PassphraseSource, peer: &str, stream: Option<String>) -> Result<ExitCode> {
    let streams: Vec<StreamName> = stream.as_deref().map(parse_stream).transpose()?.into_iter().collect();
    let (_, identity) = keyfile::load(&cfg.data_dir, pass).await?;
    let (peer, done) = take_back(cfg, &identity, peer, &streams).await?;
    for s in &done {
        println!("revoked {} from {s}: it opens nothing sealed from now on", peer.name);
    }
    publish_grants(cfg, &identity).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn rotate(cfg: &Config, pass: &PassphraseSource, stream: &str) -> Result<ExitCode> {
    let stream = parse_stream(stream)?;
    let (_, identity) = keyfile::load(&cfg.data_dir, pass).await?;
    let epoch = rotate_key(cfg, &identity, &stream).await?;
    println!(
        "{stream} now seals under key epoch {epoch}; batches sealed before stay readable with their own epoch's key"
    );
    let local = open_local(cfg).await?;
    let unpublished = local.grants_out().await.map(|g| g.iter().any(|g| !g.published));
    local.close().await;
    if unpublished? {
        publish_grants(cfg, &identity).await?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn watch(
    cfg: &Config,
    pass: &PassphraseSource,
    peer: Option<String>,
    stream: Option<String>,
    json_out: bool,
    run_for: Option<String>,
) -> Result<ExitCode> {
    let run_for = run_for
        .map(|d| humantime::parse_duration(&d).map_err(|_| anyhow!("--for {d:?} is not a duration")))
        .transpose()?;
    let stream = stream.as_deref().map(parse_stream).transpose()?;
    let (_, identity) = keyfile::load(&cfg.data_dir, pass).await?;
    let local: LocalState = open_local(cfg).await?;
    let mut inbox = Inbox::new(Arc::new(identity), local.clone(), Topics::new(&cfg.mqtt.prefix)).await?;
    let peers: Vec<PeerRow> = inbox.peers().cloned().collect();
    if peers.is_empty() {
        bail!("this agent has no peers yet: pair with `edgeseal pair` first");
    }
    let only = peer.as_deref().map(|p| find_peer(&peers, p)).transpose()?.map(|p| p.device);
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let (link, mut rx) = connect(cfg, "watch", &stop).await?;
    inbox.subscribe(&link).await?;
    eprintln!("watching {} peer(s) on {}; Ctrl-C to stop", peers.len(), link.url());
    let deadline = run_for.map(|d| tokio::time::Instant::now() + d);
    let mut out = std::io::stdout().lock();
    // "Not granted" is said once per stream, not once per batch.
    let mut locked_said = std::collections::HashSet::new();
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = tokio::signal::ctrl_c() => break,
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
    local.close().await;
    Ok(ExitCode::SUCCESS)
}

fn print_event(
    out: &mut impl Write,
    ev: &Event,
    only: Option<edgeseal_core::DeviceId>,
    stream: Option<&StreamName>,
    json_out: bool,
) -> Result<()> {
    match ev {
        Event::Readings { peer, device, stream: s, seq, readings, arrival } => {
            if only.is_some_and(|d| d != *device) || stream.is_some_and(|x| x != s) {
                return Ok(());
            }
            if let Arrival::Gap { missing } = arrival {
                eprintln!("warning: {missing} batch(es) of {peer}/{s} before batch {seq} did not arrive");
            }
            let status = match arrival {
                Arrival::Gap { .. } => "verified, after a gap",
                _ => "verified",
            };
            match readings {
                Readings::Scalar(b) => {
                    for i in 0..b.ts.len() {
                        let label = b.labels.get(i).cloned().flatten();
                        if json_out {
                            let v = json!({"peer": peer, "device": device.to_string(), "stream": s.as_str(), "seq": seq,
                                "time": format_ms(b.ts[i]), "ts_ms": b.ts[i], "value": b.values[i], "unit": b.unit,
                                "label": label, "status": status});
                            writeln!(out, "{v}")?;
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
                            let v = json!({"peer": peer, "device": device.to_string(), "stream": s.as_str(), "seq": seq,
                                "time": format_ms(b.ts[i]), "ts_ms": b.ts[i], "media_type": b.media_type,
                                "bytes": b.items[i].len(), "status": status});
                            writeln!(out, "{v}")?;
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
        }
        Event::Locked { peer, stream, seq, epoch } => {
            eprintln!(
                "{peer}/{stream} from batch {seq}: verified, but sealed under key epoch {epoch}, not granted to this agent"
            )
        }
        Event::Granted { peer, stream, epochs } => eprintln!("{peer} granted {stream} ({epochs} key epoch(s))"),
        Event::Revoked { peer, stream } => eprintln!("{peer} revoked this agent's access to {stream}"),
        Event::Refused { topic, reason } => eprintln!("refused a message on {topic}: {reason}"),
    }
    Ok(())
}
