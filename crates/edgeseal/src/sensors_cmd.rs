//! `edgeseal sensors list` and `edgeseal sensors probe`.

use std::collections::HashMap;
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::{Context, Result};
use edgeseal_agent::config::{Config, SensorSpec};
use edgeseal_agent::datadir;
use edgeseal_agent::times::format_ms;
use edgeseal_core::{Readings, StreamName, Value};
use edgeseal_sensors::grovepi::bus::{Answer, Bus, Op, device_name};
use edgeseal_store::Store;
use serde_json::json;

use crate::passphrase::PassphraseSource;

/// One configured sensor: its description and the streams it writes.
fn configured(cfg: &Config) -> Vec<(String, String, Vec<String>)> {
    cfg.sensors
        .iter()
        .map(|s| match s {
            SensorSpec::Simulated { kind, stream, interval, .. } => (
                format!("simulated {}", kind.name()),
                humantime::format_duration(*interval).to_string(),
                vec![stream.to_string()],
            ),
            SensorSpec::Hwmon { interval, sysfs } => (
                format!("hwmon under {}", sysfs.display()),
                humantime::format_duration(*interval).to_string(),
                edgeseal_sensors::hwmon::discover(sysfs).iter().map(|h| h.stream().to_string()).collect(),
            ),
            SensorSpec::JsonLines { command } => (
                match command {
                    Some(c) => format!("jsonl from `{c}`"),
                    None => "jsonl from standard input".into(),
                },
                "-".into(),
                vec![],
            ),
            SensorSpec::Grove { kind, port, interval, stream } => (
                format!("grovepi {} on {port}", kind.name()),
                humantime::format_duration(*interval).to_string(),
                edgeseal_sensors::grovepi::sensor::GroveSensor::check(*kind, *port, stream.as_deref())
                    .map(|v| v.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
            ),
        })
        .collect()
}

/// The newest reading of each stream: from the local journal, else from the store.
async fn last_readings(
    cfg: &Arc<Config>,
    pass: &PassphraseSource,
    streams: &[String],
) -> Result<HashMap<String, (i64, String)>> {
    let mut out = HashMap::new();
    if datadir::require_initialised(&cfg.data_dir).is_err() {
        return Ok(out);
    }
    let public = crate::commands::open(cfg, edgeseal_agent::service::Keys::Public).await?;
    for j in public.local().journal_open().await?.0 {
        if let Some((_, r)) = j.readings.last() {
            out.insert(r.stream.to_string(), (r.ts, show(&r.value)));
        }
    }
    public.close(std::time::Duration::from_secs(1)).await;
    let missing: Vec<&String> = streams.iter().filter(|s| !out.contains_key(*s)).collect();
    if missing.is_empty() {
        return Ok(out);
    }
    let service = crate::commands::open_secret(cfg, pass).await?;
    let info = service.store().await?.streams().await?;
    let device = service.device();
    for name in missing {
        let Ok(stream) = StreamName::new(name.clone()) else { continue };
        let Some(s) = info.iter().find(|s| s.device == device && s.stream == *name) else { continue };
        let got = service.retrieve(&stream, None, Some(s.last_ts), None).await?;
        for r in got.open(0..got.read.rows.len()).into_iter().flatten().flatten() {
            if let Readings::Scalar(b) = r
                && let Some(i) = (0..b.ts.len()).max_by_key(|&i| b.ts[i])
            {
                out.insert(name.clone(), (b.ts[i], format!("{} {}", b.values[i], b.unit)));
            }
        }
    }
    service.close(std::time::Duration::from_secs(1)).await;
    Ok(out)
}

fn show(v: &Value) -> String {
    match v {
        Value::Scalar { value, unit, .. } => format!("{value} {unit}"),
        Value::Blob { media_type, data } => format!("{} B {media_type}", data.len()),
    }
}

pub async fn list(cfg: Arc<Config>, pass: &PassphraseSource, json_out: bool) -> Result<ExitCode> {
    let sensors = configured(&cfg);
    let streams: Vec<String> = sensors.iter().flat_map(|(_, _, s)| s.clone()).collect();
    let last = last_readings(&cfg, pass, &streams).await?;
    if json_out {
        let rows: Vec<_> = sensors
            .iter()
            .map(|(what, every, streams)| {
                json!({
                    "sensor": what,
                    "interval": every,
                    "streams": streams.iter().map(|s| json!({
                        "stream": s,
                        "last": last.get(s).map(|(ts, v)| json!({"time": format_ms(*ts), "value": v})),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<36} {:<9} {:<22} LAST READING", "SENSOR", "EVERY", "STREAM");
    for (what, every, streams) in &sensors {
        if streams.is_empty() {
            println!("{what:<36} {every:<9} {:<22} -", "-");
        }
        for s in streams {
            let l = last.get(s).map_or("-".to_string(), |(ts, v)| format!("{v} at {}", format_ms(*ts)));
            println!("{what:<36} {every:<9} {s:<22} {l}");
        }
    }
    if cfg.uses_grovepi() {
        println!("GrovePi bus: {}", cfg.grovepi_bus);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn probe(cfg: &Config, bus: Option<String>) -> Result<ExitCode> {
    let spec = bus.unwrap_or_else(|| cfg.grovepi_bus.clone());
    let shown = spec.clone();
    let (version, found) = tokio::task::spawn_blocking(move || -> Result<_> {
        let bus = Bus::open(&spec)?;
        let version = bus.call(Op::Version)?;
        let found = bus.call(Op::Scan)?;
        Ok((version, found))
    })
    .await?
    .with_context(|| format!("probing {shown}"))?;
    if let Answer::Version(a, b, c) = version {
        println!("GrovePi+ firmware {a}.{b}.{c} on {shown}");
    }
    if let Answer::Addresses(addrs) = found {
        for a in addrs {
            println!("  0x{a:02x}  {}", device_name(a));
        }
    }
    Ok(ExitCode::SUCCESS)
}
