//! `edgeseal bench sharing`: live sharing through a broker, sealed against
//! plaintext with the same client in the same run. Each message is one
//! reading (the "every reading" live cadence): the publisher seals and signs
//! it; the subscriber parses, checks the signature and sequence, and opens it.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use edgeseal_core::envelope::{self, BatchHash, SealParams, seal};
use edgeseal_core::keys::Identity;
use edgeseal_core::pairing::{Host, Joiner, PairCode};
use edgeseal_core::{Readings, ScalarBatch, StreamName};
use edgeseal_mqtt::link::{BrokerUrl, Link, LinkOptions, Message};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bench::random_identity;
use crate::share::rng;

/// Messages in flight at once (published, not yet received).
const WINDOW: usize = 512;

struct Run {
    per_s: f64,
    lost: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// Which way the messages are made and read.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Sealed,
    Plain,
}

struct Ends {
    id: Arc<Identity>,
    stream: StreamName,
}

impl Ends {
    fn make(&self, mode: Mode, seq: u64, prev: &mut BatchHash, scratch: &mut Vec<u8>) -> Result<Vec<u8>> {
        let ts = 1_767_225_600_000 + seq as i64;
        let value = 20.0 + (seq % 100) as f64 / 10.0;
        match mode {
            Mode::Plain => Ok(json!({"seq": seq, "ts": ts, "value": value, "unit": "°C"}).to_string().into_bytes()),
            Mode::Sealed => {
                let r = Readings::Scalar(ScalarBatch {
                    unit: "°C".into(),
                    ts: vec![ts],
                    values: vec![value],
                    labels: vec![],
                });
                let mut salt = [0u8; 16];
                getrandom::fill(&mut salt).map_err(|e| anyhow!("no system randomness: {e}"))?;
                let params = SealParams {
                    device: self.id.device_id(),
                    stream: self.stream.clone(),
                    seq,
                    epoch: 0,
                    prev: *prev,
                    salt,
                };
                let key = self.id.epoch_key(&self.stream, 0);
                let s = seal(&r, &params, &key, Some(&self.id), scratch)?;
                *prev = s.hash;
                Ok(s.bytes)
            }
        }
    }

    /// Reads one message back to its sequence number, checking everything a receiver checks.
    fn read(&self, mode: Mode, payload: &[u8], last: &mut Option<u64>) -> Result<u64> {
        match mode {
            Mode::Plain => {
                let v: serde_json::Value = serde_json::from_slice(payload)?;
                v["seq"].as_u64().ok_or_else(|| anyhow!("no seq"))
            }
            Mode::Sealed => {
                let p = envelope::parse(payload)?;
                if p.authorship(&p.hash()) != envelope::Authorship::Device {
                    bail!("bad signature");
                }
                if last.is_some_and(|l| p.header.seq <= l) {
                    bail!("replay");
                }
                *last = Some(p.header.seq);
                p.open(&self.id.epoch_key(&self.stream, 0))?;
                Ok(p.header.seq)
            }
        }
    }
}

async fn link(url: &BrokerUrl, name: &str, stop: &CancellationToken) -> Result<(Link, mpsc::Receiver<Message>)> {
    let mut o = LinkOptions::new(url.clone(), format!("edgeseal-bench-{name}-{}", std::process::id()));
    o.ack_timeout = Duration::from_secs(60);
    crate::share_cmd::connected(o, stop).await
}

/// Sends `n` messages (at `rate` per second, or as fast as the broker takes them) and measures the receiver.
async fn run(url: &BrokerUrl, ends: Arc<Ends>, mode: Mode, n: usize, rate: Option<u32>) -> Result<Run> {
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let topic =
        format!("edgeseal-bench/{}/{}", std::process::id(), if mode == Mode::Sealed { "sealed" } else { "plain" });
    let (publisher, _) = link(url, "pub", &stop).await?;
    let (subscriber, mut rx) = link(url, "sub", &stop).await?;
    subscriber.subscribe(&topic).await?;
    subscriber.publish(&format!("{topic}/sync"), Vec::new(), false).await?;
    // Sealed before sending when measuring throughput (so it is the link and receiver that are measured,
    // with sealing counted separately below); sealed on the fly at a fixed rate.
    let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    // End-to-end flow control: at most WINDOW messages published but not yet received, so the
    // broker's per-subscriber queue (mosquitto: max_queued_messages, 1000 by default) never overflows.
    let credit = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let receiver = {
        let ends = ends.clone();
        let sent_at = sent_at.clone();
        let credit = credit.clone();
        tokio::spawn(async move {
            let mut got = vec![false; n];
            let mut latencies = Vec::with_capacity(n);
            let mut last = None;
            let mut count = 0usize;
            let mut finished = Instant::now();
            while count < n {
                let m = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                    Ok(Some(m)) => m,
                    _ => break,
                };
                credit.add_permits(1);
                let Ok(seq) = ends.read(mode, &m.payload, &mut last) else { continue };
                let now = Instant::now();
                if let Some(slot) = got.get_mut(seq as usize)
                    && !*slot
                {
                    *slot = true;
                    count += 1;
                    finished = now;
                    if let Some(t) = sent_at.lock().unwrap_or_else(|p| p.into_inner())[seq as usize] {
                        latencies.push(now.duration_since(t));
                    }
                }
            }
            (count, finished, latencies)
        })
    };
    let start = Instant::now();
    let tick = rate.map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
    let mut prev = BatchHash::default();
    let mut scratch = Vec::new();
    let mut msgs = Vec::with_capacity(n);
    if tick.is_none() {
        for seq in 0..n {
            msgs.push(ends.make(mode, seq as u64, &mut prev, &mut scratch)?);
        }
    }
    let start = if tick.is_none() { Instant::now() } else { start };
    let sends = futures_util::stream::iter(0..n).map(|seq| {
        let publisher = publisher.clone();
        let topic = topic.clone();
        let sent_at = sent_at.clone();
        let credit = credit.clone();
        let payload = match tick {
            None => Ok(std::mem::take(&mut msgs[seq])),
            Some(_) => ends.make(mode, seq as u64, &mut prev, &mut scratch),
        };
        async move {
            if let Some(t) = tick {
                tokio::time::sleep_until((start + t * seq as u32).into()).await;
            }
            // A lost message never returns its credit: wait a little, then go on without it.
            if let Ok(Ok(p)) = tokio::time::timeout(Duration::from_secs(2), credit.acquire()).await {
                p.forget();
            }
            sent_at.lock().unwrap_or_else(|p| p.into_inner())[seq] = Some(Instant::now());
            publisher.publish(&topic, payload?, false).await.map_err(anyhow::Error::from)
        }
    });
    let failed = sends.buffered(WINDOW).filter(|r| std::future::ready(r.is_err())).count().await;
    let (count, finished, mut lat) = receiver.await?;
    if failed > 0 {
        eprintln!("{failed} publishes were not acknowledged");
    }
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Ok(Run {
        per_s: count as f64 / finished.duration_since(start).as_secs_f64().max(1e-9),
        lost: n - count,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

/// Pairs two identities through the broker (both sides in this process); returns milliseconds.
async fn pair_once(url: &BrokerUrl) -> Result<f64> {
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let (a, b) = (random_identity()?, random_identity()?);
    let (la, mut ra) = link(url, "pair-a", &stop).await?;
    let (lb, mut rb) = link(url, "pair-b", &stop).await?;
    let code = PairCode::random(&mut rng());
    let base = format!("edgeseal-bench/{}/pair/{}", std::process::id(), code.channel);
    let (to_host, to_joiner) = (format!("{base}/joiner"), format!("{base}/host"));
    la.subscribe(&to_host).await?;
    lb.subscribe(&to_joiner).await?;
    la.publish(&format!("{base}/sync"), Vec::new(), false).await?;
    lb.publish(&format!("{base}/sync"), Vec::new(), false).await?;
    async fn recv(rx: &mut mpsc::Receiver<Message>) -> Result<Vec<u8>> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?.ok_or_else(|| anyhow!("closed"))?;
            if !m.payload.is_empty() {
                return Ok(m.payload);
            }
        }
    }
    let start = Instant::now();
    let host = Host::new(code, &mut rng());
    let (joiner, m1) = Joiner::new(code, &mut rng());
    lb.publish(&to_host, m1, false).await?;
    let (host, m2) = host.answer(&recv(&mut ra).await?, &a, "a")?;
    la.publish(&to_joiner, m2, false).await?;
    let (joiner, m3) = joiner.confirm(&recv(&mut rb).await?, &b, "b")?;
    lb.publish(&to_host, m3, false).await?;
    let (_, m4) = host.finish(&recv(&mut ra).await?)?;
    la.publish(&to_joiner, m4, false).await?;
    joiner.finish(&recv(&mut rb).await?)?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

pub async fn sharing(cfg: &crate::config::Config, messages: usize, json_out: bool) -> Result<ExitCode> {
    let url: BrokerUrl = cfg.link_options("bench")?.url;
    if messages == 0 {
        bail!("--messages must be above 0");
    }
    let ends = Arc::new(Ends { id: Arc::new(random_identity()?), stream: StreamName::new("temperature")? });
    let plain = run(&url, ends.clone(), Mode::Plain, messages, None).await?;
    let sealed = run(&url, ends.clone(), Mode::Sealed, messages, None).await?;
    let paced_n = 3000.min(messages.max(1000));
    let paced_plain = run(&url, ends.clone(), Mode::Plain, paced_n, Some(1000)).await?;
    let paced = run(&url, ends.clone(), Mode::Sealed, paced_n, Some(1000)).await?;
    let pair_ms = pair_once(&url).await?;
    // Sealing alone (sign + encrypt one reading), for scale.
    let seal_start = Instant::now();
    let (mut prev, mut scratch) = (BatchHash::default(), Vec::new());
    for seq in 0..10_000u64 {
        ends.make(Mode::Sealed, seq, &mut prev, &mut scratch)?;
    }
    let seal_per_s = 10_000.0 / seal_start.elapsed().as_secs_f64();
    let lost = sealed.lost + paced.lost;
    if json_out {
        println!(
            "{}",
            json!({
                "sealed_per_s": sealed.per_s.round(), "plain_per_s": plain.per_s.round(),
                "p50_ms": paced.p50_ms, "p99_ms": paced.p99_ms, "lost": lost, "pair_ms": pair_ms,
                "plain_p50_ms": paced_plain.p50_ms, "plain_p99_ms": paced_plain.p99_ms,
                "plain_lost": plain.lost + paced_plain.lost, "seal_per_s": seal_per_s.round(), "messages": messages,
            })
        );
    } else {
        println!("broker {url}, {messages} messages of one reading each, QoS 1");
        println!("  plaintext:  {:>9.0} msg/s", plain.per_s);
        println!(
            "  sealed:     {:>9.0} msg/s  ({:.0} % of plaintext)",
            sealed.per_s,
            100.0 * sealed.per_s / plain.per_s
        );
        println!(
            "  at 1000 msg/s: sealed p50 {:.2} ms, p99 {:.2} ms (plaintext p50 {:.2}, p99 {:.2})",
            paced.p50_ms, paced.p99_ms, paced_plain.p50_ms, paced_plain.p99_ms
        );
        println!("  lost:       {lost} sealed, {} plaintext", plain.lost + paced_plain.lost);
        println!("  pairing:    {pair_ms:.1} ms");
        println!("  sealing alone: {seal_per_s:.0} readings/s on one core (sign + encrypt)");
    }
    Ok(ExitCode::SUCCESS)
}
