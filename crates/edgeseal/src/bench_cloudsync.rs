//! `edgeseal bench cloudsync`: the CloudSync publish endpoint under load. The
//! agent's own router on a real loopback socket; a load generator of our own
//! (keep-alive HTTP/1.1 connections, each sending its next request when the
//! previous one is answered) so nothing but the server is measured; every
//! request waits for the broker's PUBACK, as it does in `up`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use edgeseal_agent::config::Config;

/// One keep-alive connection: sends requests until `left` runs out; returns latencies and failures.
async fn client(
    addr: std::net::SocketAddr,
    request: Arc<Vec<u8>>,
    left: Arc<AtomicUsize>,
) -> Result<(Vec<Duration>, usize)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let (mut lat, mut failed) = (Vec::new(), 0usize);
    let mut line = String::new();
    let mut body = Vec::new();
    while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
        let start = Instant::now();
        w.write_all(&request).await?;
        line.clear();
        r.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        body.resize(length, 0);
        r.read_exact(&mut body).await?;
        lat.push(start.elapsed());
        failed += usize::from(status != 200);
    }
    Ok((lat, failed))
}

pub async fn run(cfg: &Config, requests: usize, connections: usize, json_out: bool) -> Result<ExitCode> {
    if requests == 0 || connections == 0 {
        bail!("--requests and --connections must be above 0");
    }
    let url = cfg.link_options("bench")?.url;
    let target =
        if url.tls { format!("mqtts://{}:{}", url.host, url.port) } else { format!("{}:{}", url.host, url.port) };
    let router = edgeseal_web::access::guarded(
        "bench".into(),
        edgeseal_web::CloudSync::new(cfg.mqtt.clone()).router(),
        Arc::new(edgeseal_web::Access::new(None)),
    );
    let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
    let _guard = stop.clone().drop_guard();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tasks.spawn(edgeseal_web::serve(vec![listener], router, None, stop.clone()));
    let body =
        json!({"appid": "bench", "payload": "{\"value\": 21.5}", "topic": "edgeseal-bench/cloudsync", "url": target})
            .to_string();
    let request = Arc::new(
        format!(
            "POST /api/v1/orchestration/cloudsyncmgr/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    );
    // Connect once (the first request pays for the broker connection).
    let (_, failed) = client(addr, request.clone(), Arc::new(AtomicUsize::new(1))).await?;
    if failed > 0 {
        bail!("the publish endpoint did not answer 200: is the broker {url} running?");
    }
    let left = Arc::new(AtomicUsize::new(requests));
    let start = Instant::now();
    let clients: Vec<_> = (0..connections).map(|_| tokio::spawn(client(addr, request.clone(), left.clone()))).collect();
    let (mut lat, mut failed) = (Vec::with_capacity(requests), 0usize);
    for c in clients {
        let (l, f) = c.await.context("a load connection stopped")??;
        lat.extend(l);
        failed += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let per_s = lat.len() as f64 / elapsed;
    if json_out {
        println!(
            "{}",
            json!({"requests": lat.len(), "connections": connections, "per_s": per_s.round(),
                   "p50_ms": pct(0.50), "p99_ms": pct(0.99), "errors": failed})
        );
    } else {
        println!("CloudSync publish through {url}: {} requests on {connections} keep-alive connections", lat.len());
        println!("  {per_s:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, {failed} not 200", pct(0.50), pct(0.99));
    }
    Ok(ExitCode::SUCCESS)
}
