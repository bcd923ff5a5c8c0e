//! `edgeseal bench sharing`: live sharing through a broker, sealed against
//! plaintext with the same client in the same run. Each message is one
//! reading (the "every reading" live cadence), sealed as the agent seals: in a
//! burst only the last batch of each round (`ROUND` here) is signed and covers
//! the others through the chain; at a steady 1,000/s every batch is its own
//! round and signed. The subscriber checks order and chain, holds unsigned
//! batches until the signature that covers them, verifies it, and opens them.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use edgeseal_core::envelope::{self, BatchHash, SealParams, seal};
use edgeseal_core::keys::{EpochKey, EpochKeys, Identity};
use edgeseal_core::pairing::{Host, Joiner, PairCode};
use edgeseal_core::{Readings, ScalarBatch, StreamName};
use edgeseal_mqtt::link::{Link, LinkOptions, Message, Protocol};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use edgeseal_agent::datadir::random_identity;
use edgeseal_agent::share::rng;

/// Messages in flight at once (published, not yet received).
const WINDOW: usize = 512;
/// Batches per signature in a burst (the agent's round: up to 1024 readings).
const ROUND: u64 = 256;

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
    key: EpochKey,
    /// The same, as a reader holds it.
    keys: EpochKeys,
}

/// The subscriber's state for one stream.
#[derive(Default)]
struct Receiver {
    last: Option<(u64, BatchHash)>,
    /// Unsigned batches waiting for the signature that covers them.
    held: Vec<Vec<u8>>,
}

impl Ends {
    fn make(&self, mode: Mode, seq: u64, sign: bool, prev: &mut BatchHash, scratch: &mut Vec<u8>) -> Result<Vec<u8>> {
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
                    covers: Vec::new(),
                };
                let s = seal(&r, &params, &self.key, sign.then_some(&*self.id), scratch)?;
                *prev = s.hash;
                Ok(s.bytes)
            }
        }
    }

    /// Reads one message, checking what a receiver checks; returns the
    /// sequence numbers it makes readable (none while a batch waits for its signature).
    fn read(&self, mode: Mode, payload: &[u8], rx: &mut Receiver) -> Result<Vec<u64>> {
        match mode {
            Mode::Plain => {
                let v: serde_json::Value = serde_json::from_slice(payload)?;
                Ok(vec![v["seq"].as_u64().ok_or_else(|| anyhow!("no seq"))?])
            }
            Mode::Sealed => {
                let p = envelope::parse(payload)?;
                let hash = p.hash();
                let signed = match p.authorship(&hash) {
                    envelope::Authorship::Device => true,
                    envelope::Authorship::Unsigned => false,
                    _ => bail!("bad signature"),
                };
                match rx.last {
                    Some((l, _)) if p.header.seq <= l => bail!("replay"),
                    Some((l, h)) if p.header.seq == l + 1 && p.header.prev != h => bail!("fork"),
                    Some((l, _)) if p.header.seq > l + 1 => rx.held.clear(), // a gap breaks the run
                    _ => {}
                }
                rx.last = Some((p.header.seq, hash));
                if !signed {
                    rx.held.push(payload.to_vec());
                    return Ok(Vec::new());
                }
                let mut seqs = Vec::with_capacity(rx.held.len() + 1);
                for held in rx.held.drain(..) {
                    let q = envelope::parse(&held)?;
                    q.open(&self.keys)?;
                    seqs.push(q.header.seq);
                }
                p.open(&self.keys)?;
                seqs.push(p.header.seq);
                Ok(seqs)
            }
        }
    }
}

/// A link made from the configured options (`mqtt.version`, credentials, TLS), as `name`.
async fn link(base: &LinkOptions, name: &str, stop: &CancellationToken) -> Result<(Link, mpsc::Receiver<Message>)> {
    let mut o = base.clone();
    o.client_id = format!("edgeseal-bench-{name}-{}", std::process::id());
    o.ack_timeout = Duration::from_secs(60);
    Ok(edgeseal_agent::pairing::connected(o, stop).await?)
}

/// Sends `n` messages (at `rate` per second, or as fast as the broker takes them) and measures the receiver.
async fn run(base: &LinkOptions, ends: Arc<Ends>, mode: Mode, n: usize, rate: Option<u32>) -> Result<Run> {
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let topic =
        format!("edgeseal-bench/{}/{}", std::process::id(), if mode == Mode::Sealed { "sealed" } else { "plain" });
    let (publisher, _) = link(base, "pub", &stop).await?;
    let (subscriber, mut rx) = link(base, "sub", &stop).await?;
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
            let mut state = Receiver::default();
            let mut count = 0usize;
            let mut finished = Instant::now();
            while count < n {
                let m = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                    Ok(Some(m)) => m,
                    _ => break,
                };
                credit.add_permits(1);
                let Ok(seqs) = ends.read(mode, &m.payload, &mut state) else { continue };
                let now = Instant::now();
                for seq in seqs {
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
            }
            (count, finished, latencies)
        })
    };
    let start = Instant::now();
    let tick = rate.map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
    let mut scratch = Vec::new();
    let mut msgs = Vec::with_capacity(n);
    if tick.is_none() {
        let mut prev = BatchHash::default();
        for seq in 0..n as u64 {
            let sign = seq % ROUND == ROUND - 1 || seq + 1 == n as u64;
            msgs.push(ends.make(mode, seq, sign, &mut prev, &mut scratch)?);
        }
    }
    let start = if tick.is_none() { Instant::now() } else { start };
    // One sender, so the messages leave in order; their acknowledgements are awaited alongside.
    let (ack_tx, mut ack_rx) = mpsc::channel::<edgeseal_mqtt::link::Pending>(WINDOW * 2);
    let acks = tokio::spawn(async move {
        let mut failed = 0usize;
        while let Some(p) = ack_rx.recv().await {
            failed += usize::from(p.acked().await.is_err());
        }
        failed
    });
    let mut prev = BatchHash::default();
    let mut failed = 0usize;
    for (seq, ready) in msgs.iter_mut().map(Some).chain(std::iter::repeat_with(|| None)).take(n).enumerate() {
        let payload = match ready {
            Some(m) => std::mem::take(m),
            None => ends.make(mode, seq as u64, true, &mut prev, &mut scratch)?,
        };
        if let Some(t) = tick {
            tokio::time::sleep_until((start + t * seq as u32).into()).await;
        }
        // A lost message never returns its credit: wait a little, then go on without it.
        if let Ok(Ok(p)) = tokio::time::timeout(Duration::from_secs(2), credit.acquire()).await {
            p.forget();
        }
        sent_at.lock().unwrap_or_else(|p| p.into_inner())[seq] = Some(Instant::now());
        match publisher.send(&topic, payload, false).await {
            Ok(p) => ack_tx.send(p).await.map_err(|_| anyhow!("the acknowledgement task stopped"))?,
            Err(_) => failed += 1,
        }
    }
    drop(ack_tx);
    let failed = failed + acks.await?;
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
async fn pair_once(base: &LinkOptions) -> Result<f64> {
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let (a, b) = (random_identity()?, random_identity()?);
    let (la, mut ra) = link(base, "pair-a", &stop).await?;
    let (lb, mut rb) = link(base, "pair-b", &stop).await?;
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

pub async fn sharing(cfg: &edgeseal_agent::config::Config, messages: usize, json_out: bool) -> Result<ExitCode> {
    let base = cfg.link_options("bench")?;
    let url = base.url.clone();
    let version = match base.protocol {
        Protocol::V311 => "3.1.1",
        Protocol::V5 => "5",
    };
    if messages == 0 {
        bail!("--messages must be above 0");
    }
    let id = Arc::new(random_identity()?);
    let stream = StreamName::new("temperature")?;
    let key = id.epoch_key(&stream, 0);
    let ends = Arc::new(Ends { keys: key.clone().into(), key, id, stream });
    let plain = run(&base, ends.clone(), Mode::Plain, messages, None).await?;
    let sealed = run(&base, ends.clone(), Mode::Sealed, messages, None).await?;
    let paced_n = 3000.min(messages.max(1000));
    let paced_plain = run(&base, ends.clone(), Mode::Plain, paced_n, Some(1000)).await?;
    let paced = run(&base, ends.clone(), Mode::Sealed, paced_n, Some(1000)).await?;
    let pair_ms = pair_once(&base).await?;
    // Sealing alone (encrypt one reading; sign each, or one in ROUND), for scale.
    let seal_rate = |burst: bool| -> Result<f64> {
        let start = Instant::now();
        let (mut prev, mut scratch) = (BatchHash::default(), Vec::new());
        for seq in 0..10_000u64 {
            ends.make(Mode::Sealed, seq, !burst || seq % ROUND == ROUND - 1, &mut prev, &mut scratch)?;
        }
        Ok(10_000.0 / start.elapsed().as_secs_f64())
    };
    let (seal_per_s, seal_burst_per_s) = (seal_rate(false)?, seal_rate(true)?);
    let lost = sealed.lost + paced.lost;
    if json_out {
        println!(
            "{}",
            json!({
                "sealed_per_s": sealed.per_s.round(), "plain_per_s": plain.per_s.round(),
                "p50_ms": paced.p50_ms, "p99_ms": paced.p99_ms, "lost": lost, "pair_ms": pair_ms,
                "plain_p50_ms": paced_plain.p50_ms, "plain_p99_ms": paced_plain.p99_ms,
                "plain_lost": plain.lost + paced_plain.lost, "seal_per_s": seal_per_s.round(),
                "seal_burst_per_s": seal_burst_per_s.round(), "messages": messages,
                "mqtt_version": version,
            })
        );
    } else {
        println!("broker {url} (MQTT {version}), {messages} messages of one reading each, QoS 1");
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
        println!(
            "  sealing alone: {seal_per_s:.0} readings/s on one core signed each, {seal_burst_per_s:.0} in bursts (one signature per {ROUND})"
        );
    }
    Ok(ExitCode::SUCCESS)
}
