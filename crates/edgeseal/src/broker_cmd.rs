//! `edgeseal broker`: the embedded broker alone (the one `up` runs inside the agent).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use edgeseal_agent::config::Config;
use edgeseal_agent::runtime::broker::{is_port_taken, port_taken_help, start};
use edgeseal_mqtt::broker;

use crate::signals::{shutdown_signal, sleep_opt};

/// Says which files the broker's first start wrote.
pub fn say_written(written: &[(std::path::PathBuf, bool)]) {
    for (path, private) in written {
        println!("  broker:   wrote {}{}", path.display(), if *private { " (0600)" } else { "" });
    }
}

/// `edgeseal broker`: the embedded broker until SIGINT/SIGTERM or `run_for`.
pub async fn run(cfg: &Config, run_for: Option<&str>) -> Result<ExitCode> {
    let run_for = run_for
        .map(|s| humantime::parse_duration(s).with_context(|| format!("--for {s:?} is not a duration (e.g. 10m)")))
        .transpose()?;
    let Some(e) = &cfg.embedded else {
        return Err(anyhow!("broker.listen is empty: pass --listen ADDR[:PORT] to run the broker"));
    };
    let b = match start(e).await {
        Err(err) if is_port_taken(&err) => return Err(anyhow!(err).context(port_taken_help(e))),
        r => {
            let (b, written) = r?;
            say_written(&written);
            b
        }
    };
    let url = b.url();
    println!(
        "edgeseal broker: MQTT 3.1.1 and 5 on {}, security level {}{}",
        b.local_addr(),
        e.level.describe(),
        if e.mutual_tls { ", mutual TLS" } else { "" }
    );
    println!("  files:    {}", e.dir.display());
    println!("  agents:   mqtt.broker = \"{url}\"");
    if e.level.uses_tls() {
        println!("            mqtt.ca = \"{}\"", e.dir.join("ca.pem").display());
    }
    if e.level == edgeseal_mqtt::mosquitto::Level::TlsPassword {
        println!(
            "            mqtt.username = \"{}\", mqtt.password in {} (users: {})",
            broker::AGENT_USER,
            e.dir.join(format!("{}.password", broker::AGENT_USER)).display(),
            e.dir.join("passwd").display()
        );
    }
    if e.mutual_tls {
        println!("            client certificates: `edgeseal pki client NAME --out {}`", e.dir.display());
    }
    println!("Stop with Ctrl-C.");
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = sleep_opt(run_for) => {}
    }
    tokio::time::timeout(Duration::from_secs(10), b.stop()).await.ok();
    println!("broker stopped");
    Ok(ExitCode::SUCCESS)
}

/// `edgeseal ingest`: stores what devices publish, as one of `group`, until SIGINT/SIGTERM or `run_for`;
/// a status line every 10 s and at the end.
pub async fn ingest(cfg: &Config, group: &str, name: Option<&str>, run_for: Option<&str>) -> Result<ExitCode> {
    use edgeseal_agent::ingest;
    if cfg.stores_through_broker() {
        anyhow::bail!(
            "ingest writes what devices publish to a database, and store = \"broker\" is none: give it --store sqlite://PATH, postgres://… or mysql://…"
        );
    }
    let run_for = run_for
        .map(|s| humantime::parse_duration(s).with_context(|| format!("--for {s:?} is not a duration (e.g. 10m)")))
        .transpose()?;
    let stats = std::sync::Arc::new(ingest::IngestStats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn({
        let (cfg, group, stats, stop) = (cfg.clone(), group.to_string(), stats.clone(), stop.clone());
        let name = name.map(str::to_string);
        async move { ingest::run(&cfg, &group, name.as_deref(), stats, stop).await }
    });
    println!(
        "edgeseal ingest: {} into {}. Stop with Ctrl-C.",
        ingest::filters(&cfg.mqtt.prefix, group).join(" and "),
        edgeseal_store::redact_url(&cfg.store_url)
    );
    let mut worker = worker;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    let (signal, deadline) = (shutdown_signal(), sleep_opt(run_for));
    tokio::pin!(signal, deadline);
    let ended = loop {
        tokio::select! {
            _ = &mut signal => break None,
            _ = &mut deadline => break None,
            r = &mut worker => break Some(r),
            _ = tick.tick() => println!("ingest: {}", ingest::summary(&stats)),
        }
    };
    stop.cancel();
    let done = match ended {
        Some(r) => r,
        None => worker.await,
    };
    println!("stopped: {}", ingest::summary(&stats));
    done.map_err(|e| anyhow!("the ingest task failed: {e}"))??;
    Ok(ExitCode::SUCCESS)
}
