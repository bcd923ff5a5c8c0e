//! Configuration in two stages: the raw layers (defaults < TOML file <
//! `EDGESEAL_*` environment < flags) merged by figment, then a validated,
//! typed [`Config`] (the agent's). The defaults are `default.toml`, which is
//! also what `edgeseal config print-default` prints, so the two cannot drift
//! apart. Every error here is a configuration error (exit code 2).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use edgeseal_agent::config::{Config, LcdConfig, MqttConfig, SensorSpec, TentativeLimits};
use edgeseal_core::StreamName;
use edgeseal_mqtt::broker;
use edgeseal_mqtt::link::{BrokerUrl, Password};
use edgeseal_mqtt::mosquitto::Level;
use edgeseal_sensors::batcher::Policy;
use edgeseal_sensors::grovepi::Port;
use edgeseal_sensors::grovepi::sensor::{GroveKind, GroveSensor};
use edgeseal_sensors::simulated::Kind;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Keys the environment may set (`EDGESEAL_BATCH__COUNT` → `batch.count`).
const ENV_KEYS: &[&str] = &[
    "data_dir",
    "name",
    "store",
    "store_timeout",
    "log",
    "batch.count",
    "batch.interval",
    "outbox.retry_max",
    "outbox.checkpoint_every",
    "grovepi.bus",
    "lcd.enabled",
    "lcd.refresh",
    "mqtt.broker",
    "mqtt.prefix",
    "mqtt.version",
    "mqtt.username",
    "mqtt.password",
    "mqtt.ca",
    "mqtt.client_cert",
    "mqtt.client_key",
    "mqtt.tentative_max",
    "mqtt.tentative_total_max",
    "broker.listen",
    "broker.level",
    "broker.mutual_tls",
    "broker.dir",
    "web.listen",
    "web.cloudsync_listen",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    data_dir: PathBuf,
    name: String,
    store: String,
    store_timeout: String,
    log: String,
    batch: RawBatch,
    outbox: RawOutbox,
    #[serde(default)]
    streams: BTreeMap<String, RawBatchOverride>,
    #[serde(default)]
    sensor: Vec<RawSensor>,
    grovepi: RawGrovePi,
    lcd: RawLcd,
    mqtt: RawMqtt,
    broker: RawBroker,
    web: RawWeb,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: String,
    cloudsync_listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    listen: String,
    level: u8,
    mutual_tls: bool,
    dir: String,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    #[serde(skip_serializing_if = "String::is_empty")]
    broker: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    prefix: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "edgeseal_agent::config::text_or_number",
        default
    )]
    version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    password: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    ca: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    client_cert: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    client_key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    tentative_max: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    tentative_total_max: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrovePi {
    bus: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLcd {
    enabled: bool,
    streams: Vec<String>,
    refresh: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    count: usize,
    interval: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatchOverride {
    count: Option<usize>,
    interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    retry_max: String,
    checkpoint_every: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSensor {
    kind: String,
    model: Option<String>,
    stream: Option<String>,
    interval: Option<String>,
    command: Option<String>,
    seed: Option<u64>,
    sysfs: Option<PathBuf>,
    port: Option<String>,
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchOverrides>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<RawMqtt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerOverrides>,
}

/// `edgeseal broker` flags over `[broker]`.
#[derive(Debug, Default, Serialize)]
pub struct BrokerOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mutual_tls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl Overrides {
    /// `--broker URL` on the command line.
    pub fn broker(&mut self, url: Option<String>) {
        if let Some(url) = url {
            self.mqtt = Some(RawMqtt { broker: url, ..Default::default() });
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct BatchOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// Loads the configuration. `file` is `--config`; without it `./edgeseal.toml` is read if present.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, edgeseal_agent::Error> {
    if let Some(f) = file
        && !f.exists()
    {
        return Err(edgeseal_agent::Error::bad(format!(
            "config file {} does not exist (see `edgeseal config print-default` for a template)",
            f.display()
        )));
    }
    layers(file, overrides).map_err(|e| {
        let text = format!("{e:#}");
        edgeseal_agent::Error::Config(text.strip_prefix("invalid configuration: ").unwrap_or(&text).to_string())
    })
}

fn layers(file: Option<&Path>, overrides: &Overrides) -> Result<Config> {
    let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
    let path = match file {
        Some(f) => {
            if !f.exists() {
                bail!(
                    "config file {} does not exist (see `edgeseal config print-default` for a template)",
                    f.display()
                );
            }
            f.to_path_buf()
        }
        None => PathBuf::from("edgeseal.toml"),
    };
    let text = std::fs::read_to_string(&path).ok();
    if text.is_some() {
        fig = fig.merge(Toml::file_exact(&path));
    }
    fig = fig
        .merge(
            Env::prefixed("EDGESEAL_")
                .split("__")
                .filter(|k| ENV_KEYS.iter().any(|e| k.as_str().eq_ignore_ascii_case(e))),
        )
        .merge(Serialized::defaults(overrides));
    // figment names keys with its profile ("default.batch.count"); users wrote "batch.count".
    let raw: Raw = fig
        .extract()
        .map_err(|e| anyhow!("invalid configuration: {}", e.to_string().replace("key \"default.", "key \"")))?;
    validate(raw, text.as_deref().map(|t| (path.as_path(), t)))
}

/// "sensor #N", with the file and line of its `[[sensor]]` when the file declares it.
fn sensor_at(i: usize, kind: &str, file: Option<(&Path, &str)>) -> String {
    let line = file.and_then(|(path, text)| {
        let headers: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with("[[sensor]]"))
            .map(|(n, _)| n + 1)
            .collect();
        headers.get(i).map(|n| format!(", {} line {n}", path.display()))
    });
    format!("sensor #{} (kind = {kind:?}{})", i + 1, line.unwrap_or_default())
}

fn validate(raw: Raw, file: Option<(&Path, &str)>) -> Result<Config> {
    let batch = Policy {
        count: raw.batch.count,
        interval_ms: optional_duration("batch.interval", &raw.batch.interval)?
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    };
    if batch.count == 0 && batch.interval_ms.is_none() {
        bail!(
            "invalid configuration: batch.count = 0 and batch.interval = \"off\" would never cut a batch; set at least one"
        );
    }
    let mut per_stream = HashMap::new();
    for (name, o) in raw.streams {
        let stream =
            StreamName::new(name.clone()).with_context(|| format!("invalid configuration: [streams.{name}]"))?;
        let interval_ms = match &o.interval {
            Some(i) => optional_duration(&format!("streams.{name}.interval"), i)?
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            None => batch.interval_ms,
        };
        per_stream.insert(stream, Policy { count: o.count.unwrap_or(batch.count), interval_ms });
    }
    let mut sensors = Vec::new();
    for (i, s) in raw.sensor.into_iter().enumerate() {
        let at = sensor_at(i, &s.kind, file);
        let interval = match &s.interval {
            Some(t) => duration(&format!("{at}: interval"), t)?,
            None => Duration::from_secs(1),
        };
        if interval.is_zero() {
            bail!("invalid configuration: {at}: interval must be above zero");
        }
        sensors.push(match s.kind.as_str() {
            "simulated" => {
                let model = s.model.as_deref().unwrap_or("temperature");
                let kind = Kind::parse(model).ok_or_else(|| {
                    anyhow!(
                        "invalid configuration: {at}: model {model:?} is not one of temperature, humidity, air_quality"
                    )
                })?;
                let stream = StreamName::new(s.stream.unwrap_or_else(|| kind.name().to_string()))
                    .with_context(|| format!("invalid configuration: {at}: stream"))?;
                SensorSpec::Simulated { kind, stream, interval, seed: s.seed.unwrap_or(i as u64 + 1) }
            }
            "hwmon" => SensorSpec::Hwmon { interval, sysfs: s.sysfs.unwrap_or_else(|| PathBuf::from("/sys")) },
            "jsonl" => SensorSpec::JsonLines { command: s.command.filter(|c| !c.trim().is_empty()) },
            "grovepi" => {
                let model = s.model.as_deref().unwrap_or("");
                let kind = GroveKind::parse(model).ok_or_else(|| {
                    anyhow!("invalid configuration: {at}: model {model:?} is not one of {}", GroveKind::MODELS)
                })?;
                let port: Port =
                    s.port.as_deref().unwrap_or("").parse().map_err(|e| anyhow!("invalid configuration: {at}: {e}"))?;
                GroveSensor::check(kind, port, s.stream.as_deref())
                    .map_err(|e| anyhow!("invalid configuration: {at}: {e}"))?;
                SensorSpec::Grove { kind, port, interval, stream: s.stream }
            }
            other => {
                bail!("invalid configuration: {at}: unknown kind {other:?} (use simulated, hwmon, jsonl or grovepi)")
            }
        });
    }
    let lcd = LcdConfig {
        enabled: raw.lcd.enabled,
        streams: raw
            .lcd
            .streams
            .iter()
            .map(|s| StreamName::new(s.clone()).with_context(|| format!("invalid configuration: lcd.streams: {s:?}")))
            .collect::<Result<_>>()?,
        refresh: duration("lcd.refresh", &raw.lcd.refresh)?,
    };
    let mqtt = validate_mqtt(raw.mqtt)?;
    let embedded = validate_broker(raw.broker, &raw.data_dir)?;
    let mut web_listen = Vec::new();
    for (key, v) in [("web.listen", &raw.web.listen), ("web.cloudsync_listen", &raw.web.cloudsync_listen)] {
        if !v.trim().is_empty() {
            web_listen.push(v.trim().parse().map_err(|_| {
                anyhow!("invalid configuration: {key} = {v:?} is not ADDRESS:PORT (e.g. 127.0.0.1:5000)")
            })?);
        }
    }
    let name = if raw.name.trim().is_empty() { host_name() } else { raw.name };
    let store_url = if raw.store.trim().is_empty() {
        format!("sqlite://{}", raw.data_dir.join("store.db").display())
    } else {
        raw.store
    };
    Ok(Config {
        data_dir: raw.data_dir,
        name,
        store_url,
        store_timeout: duration("store_timeout", &raw.store_timeout)?,
        log: raw.log,
        batch,
        per_stream,
        retry_max: duration("outbox.retry_max", &raw.outbox.retry_max)?,
        checkpoint_every: duration("outbox.checkpoint_every", &raw.outbox.checkpoint_every)?,
        sensors,
        grovepi_bus: raw.grovepi.bus,
        lcd,
        mqtt,
        embedded,
        web_listen,
    })
}

fn validate_broker(b: RawBroker, data_dir: &Path) -> Result<Option<broker::Settings>> {
    let level = Level::from_number(b.level).map_err(|e| anyhow!("invalid configuration: broker.level: {e}"))?;
    if b.mutual_tls && !level.uses_tls() {
        bail!("invalid configuration: broker.mutual_tls needs TLS: set broker.level to 2 or 3");
    }
    let listen = b.listen.trim();
    if listen.is_empty() {
        return Ok(None);
    }
    let listen = broker::parse_listen(listen, level.default_port())
        .map_err(|e| anyhow!("invalid configuration: broker.listen: {e}"))?;
    let dir = if b.dir.trim().is_empty() { data_dir.join("broker") } else { PathBuf::from(b.dir.trim()) };
    Ok(Some(broker::Settings { listen, level, mutual_tls: b.mutual_tls, dir }))
}

fn validate_mqtt(m: RawMqtt) -> Result<MqttConfig> {
    let some = |s: String| Some(s).filter(|s| !s.trim().is_empty());
    let broker = match some(m.broker) {
        None => None,
        Some(u) => Some(u.trim().parse::<BrokerUrl>().map_err(|e| anyhow!("invalid configuration: mqtt.broker: {e}"))?),
    };
    let prefix = m.prefix.trim().trim_end_matches('/').to_string();
    if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.starts_with('/') {
        bail!("invalid configuration: mqtt.prefix = {prefix:?}: use topic levels without wildcards, e.g. edgeseal/v1");
    }
    let client_cert = match (some(m.client_cert), some(m.client_key)) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        _ => bail!("invalid configuration: mqtt.client_cert and mqtt.client_key go together (mutual TLS)"),
    };
    let protocol = m.version.parse().map_err(|e| anyhow!("invalid configuration: mqtt.version: {e}"))?;
    let tentative = TentativeLimits {
        stream: bytes_setting("mqtt.tentative_max", &m.tentative_max)?,
        total: bytes_setting("mqtt.tentative_total_max", &m.tentative_total_max)?,
    };
    Ok(MqttConfig {
        tentative,
        broker,
        prefix,
        protocol,
        username: some(m.username),
        password: some(m.password).map(Password::new),
        ca: some(m.ca).map(PathBuf::from),
        client_cert,
    })
}

/// A size such as "4MiB", "512KiB", "16MB" or a plain number of bytes.
fn bytes_setting(key: &str, s: &str) -> Result<usize> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let unit: usize = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            bail!("invalid configuration: {key} = {s:?}: use a size such as \"4MiB\", \"512KiB\" or a number of bytes")
        }
    };
    let n: usize = t[..digits].parse().map_err(|_| {
        anyhow!("invalid configuration: {key} = {s:?}: use a size such as \"4MiB\" or a number of bytes")
    })?;
    match n.checked_mul(unit) {
        Some(v) if v > 0 => Ok(v),
        _ => bail!("invalid configuration: {key} = {s:?}: must be above zero and below {} bytes", usize::MAX),
    }
}

fn duration(key: &str, s: &str) -> Result<Duration> {
    humantime::parse_duration(s.trim())
        .map_err(|_| anyhow!("invalid configuration: {key} = {s:?} is not a duration (examples: 500ms, 10s, 5m, 1h)"))
}

fn optional_duration(key: &str, s: &str) -> Result<Option<Duration>> {
    if matches!(s.trim(), "off" | "none" | "") {
        return Ok(None);
    }
    let d = duration(key, s)?;
    if d.is_zero() {
        return Ok(None);
    }
    Ok(Some(d))
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "edgeseal".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let raw: Raw = Figment::from(Toml::string(DEFAULT_TOML)).extract().unwrap();
        let c = validate(raw, None).unwrap();
        assert_eq!(c.batch, Policy { count: 1000, interval_ms: Some(300_000) });
        assert_eq!(c.sensors.len(), 4);
        assert!(c.store_url.ends_with("edgeseal-data/store.db"));
    }
}
