//! The embedded broker: `edgeseal broker` runs it alone, `up` inside the agent.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use edgeseal_mqtt::broker::{self, Broker, Settings};

use crate::agent::{shutdown_signal, sleep_opt};
use crate::config::Config;

/// Creates the files the security level needs (saying so) and starts the
/// broker. A taken port is `edgeseal_mqtt::Error::PortTaken` (see [`port_taken_help`]).
pub async fn start(e: &Settings) -> Result<Box<dyn Broker>> {
    let written = e.prepare(&[e.listen.ip()]).context("cannot prepare the embedded broker (broker.* settings)")?;
    for (path, private) in written {
        println!("  broker:   wrote {}{}", path.display(), if private { " (0600)" } else { "" });
    }
    broker::start(e).await.map_err(|err| match err {
        edgeseal_mqtt::Error::PortTaken(_) => anyhow!(err),
        other => anyhow!(other).context("cannot start the embedded broker (broker.* settings)"),
    })
}

/// What to do when the embedded broker's port is taken.
pub fn port_taken_help(e: &Settings) -> String {
    let mut other = e.listen;
    other.set_port(e.listen.port().wrapping_add(1).max(1024));
    format!(
        "to share through the broker already there, set mqtt.broker (or --broker {}); to run the embedded broker \
         on another port, set broker.listen (EDGESEAL_BROKER__LISTEN={other}); to run none, set broker.listen = \"\"",
        broker::local_url(e.listen, e.level.uses_tls())
    )
}

/// Whether `err` is the embedded broker's port being taken.
pub fn is_port_taken(err: &anyhow::Error) -> bool {
    err.downcast_ref::<edgeseal_mqtt::Error>().is_some_and(|e| matches!(e, edgeseal_mqtt::Error::PortTaken(_)))
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
        Err(err) if is_port_taken(&err) => return Err(err.context(port_taken_help(e))),
        r => r?,
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
