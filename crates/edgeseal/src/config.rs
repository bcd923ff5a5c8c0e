//! Configuration in two stages: the raw layers (defaults < TOML file <
//! `EDGESEAL_*` environment < flags) merged by figment, then a validated,
//! typed [`Config`] (the agent's). The defaults are `default.toml`, which is
//! also what `edgeseal config print-default` prints, so the two cannot drift
//! apart. Every error here is a configuration error (exit code 2).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use edgeseal_agent::config::{Config, Keep, LcdConfig, MqttConfig, SensorSpec, TentativeLimits, WebTls};
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
    "outbox.resend_after",
    "retention.keep",
    "retention.every",
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
    "web.tls",
    "web.cert",
    "web.key",
    "ui.time_zone",
];

#[derive(Debug, Deserialize)]
struct Raw {
    data_dir: PathBuf,
    name: String,
    store: String,
    store_timeout: String,
    log: String,
    batch: RawBatch,
    outbox: RawOutbox,
    retention: RawRetention,
    #[serde(default)]
    streams: BTreeMap<String, RawStreamOverride>,
    #[serde(default)]
    sensor: Vec<RawSensor>,
    grovepi: RawGrovePi,
    lcd: RawLcd,
    mqtt: RawMqtt,
    broker: RawBroker,
    web: RawWeb,
    ui: RawUi,
}

#[derive(Debug, Deserialize, Serialize, Default)]
pub struct RawUi {
    time_zone: String,
}

#[derive(Debug, Deserialize)]
struct RawWeb {
    listen: String,
    cloudsync_listen: String,
    tls: bool,
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
struct RawBroker {
    listen: String,
    level: u8,
    mutual_tls: bool,
    dir: String,
}

#[derive(Debug, Deserialize, Serialize, Default)]
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
struct RawGrovePi {
    bus: String,
}

#[derive(Debug, Deserialize)]
struct RawLcd {
    enabled: bool,
    streams: Vec<String>,
    refresh: String,
}

#[derive(Debug, Deserialize)]
struct RawBatch {
    count: usize,
    interval: String,
}

#[derive(Debug, Deserialize)]
struct RawStreamOverride {
    count: Option<usize>,
    interval: Option<String>,
    keep: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawRetention {
    keep: String,
    every: String,
}

#[derive(Debug, Deserialize)]
struct RawOutbox {
    retry_max: String,
    checkpoint_every: String,
    resend_after: String,
}

#[derive(Debug, Deserialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ui: Option<RawUi>,
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
    /// `--tz ZONE` on the command line.
    pub fn time_zone(&mut self, zone: Option<String>) {
        if let Some(time_zone) = zone {
            self.ui = Some(RawUi { time_zone });
        }
    }

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
        return Err(edgeseal_agent::Error::Config(format!(
            "config file {} does not exist (see `edgeseal config print-default` for a template)",
            f.display()
        )));
    }
    layers(file, overrides).map_err(|e| {
        let text = format!("{e:#}");
        edgeseal_agent::Error::Config(text.strip_prefix("invalid configuration: ").unwrap_or(&text).to_string())
    })
}

/// Environment variables of edgeseal's own that are not settings.
const ENV_OTHER: &[&str] = &["PASSPHRASE", "BACKUP_PASSPHRASE", "REQUIRE_SERVICES", "SCHEMATHESIS", "WRITE_VECTORS"];

/// The environment variable of a setting (`batch.count` → `EDGESEAL_BATCH__COUNT`).
fn env_name(key: &str) -> String {
    format!("EDGESEAL_{}", key.to_ascii_uppercase().replace('.', "__"))
}

/// Warnings for `EDGESEAL_*` variables that set nothing, naming the nearest setting.
fn unknown_env(vars: impl Iterator<Item = String>) -> Vec<String> {
    vars.filter_map(|var| {
        let rest = var.strip_prefix("EDGESEAL_")?;
        let key = rest.to_ascii_lowercase().replace("__", ".");
        if ENV_KEYS.contains(&key.as_str()) || ENV_OTHER.contains(&rest) || rest.starts_with("TEST_") {
            return None;
        }
        let nearest = ENV_KEYS.iter().map(|k| env_name(k)).min_by_key(|k| strsim::levenshtein(k, &var))?;
        Some(format!(
            "warning: the environment variable {var} is not a setting and does nothing (did you mean {nearest}?)"
        ))
    })
    .collect()
}

/// The keys a `[[sensor]]` table may hold (which of them apply depends on its kind).
const SENSOR_KEYS: &[&str] = &["kind", "model", "stream", "interval", "command", "seed", "sysfs", "port"];
/// The keys of a `[streams.NAME]` table.
const STREAM_KEYS: &[&str] = &["count", "interval", "keep"];

/// Warnings for keys of the file that are not settings (they would be
/// ignored), each naming the nearest valid key.
fn unknown_keys(text: &str, file: &Path) -> Vec<String> {
    let (Ok(file_table), Ok(known)) = (text.parse::<toml::Table>(), DEFAULT_TOML.parse::<toml::Table>()) else {
        return Vec::new(); // not TOML: figment names the error
    };
    let mut out = Vec::new();
    let mut warn = |key: String, valid: &[&str]| {
        let nearest = valid.iter().min_by_key(|k| strsim::levenshtein(k, key.rsplit('.').next().unwrap_or(&key)));
        let hint = nearest.map(|n| format!(" (did you mean {n:?}?)")).unwrap_or_default();
        out.push(format!("warning: {} sets {key:?}, which is not a setting and does nothing{hint}", file.display()));
    };
    let top: Vec<&str> = known.keys().map(String::as_str).chain(["streams", "sensor"]).collect();
    for (k, v) in &file_table {
        match (k.as_str(), v) {
            ("streams", toml::Value::Table(t)) => {
                for (name, o) in t {
                    for key in o.as_table().into_iter().flat_map(|o| o.keys()) {
                        if !STREAM_KEYS.contains(&key.as_str()) {
                            warn(format!("streams.{name}.{key}"), STREAM_KEYS);
                        }
                    }
                }
            }
            ("sensor", toml::Value::Array(sensors)) => {
                for (i, key) in sensors
                    .iter()
                    .enumerate()
                    .flat_map(|(i, s)| s.as_table().into_iter().flat_map(move |t| t.keys().map(move |k| (i, k))))
                {
                    if !SENSOR_KEYS.contains(&key.as_str()) {
                        warn(format!("sensor #{}.{key}", i + 1), SENSOR_KEYS);
                    }
                }
            }
            (section, toml::Value::Table(t)) if known.get(section).is_some_and(toml::Value::is_table) => {
                let valid: Vec<&str> =
                    known[section].as_table().into_iter().flat_map(|t| t.keys()).map(String::as_str).collect();
                for key in t.keys().filter(|key| !valid.contains(&key.as_str())) {
                    warn(format!("{section}.{key}"), &valid);
                }
            }
            (key, _) if !top.contains(&key) => warn(key.to_string(), &top),
            _ => {}
        }
    }
    out
}

/// The configuration file's text: `None` when the default file is absent;
/// an error when it cannot be read or is not UTF-8 (never silently ignored).
fn file_text(path: &Path, named: bool) -> Result<Option<String>> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => Ok(None),
        Err(e) => bail!("cannot read the config file {}: {e}", path.display()),
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => Ok(Some(t)),
            Err(e) => bail!(
                "the config file {} is not valid UTF-8 (byte {} is not): it must be TOML text",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        },
    }
}

/// The layers merged: defaults, the file, the environment, the flags; and the file's path and text.
fn merged(file: Option<&Path>, overrides: &Overrides) -> Result<(Figment, Option<(PathBuf, String)>)> {
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
    let text = file_text(&path, file.is_some())?;
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
    Ok((fig, text.map(|t| (path, t))))
}

fn layers(file: Option<&Path>, overrides: &Overrides) -> Result<Config> {
    let (fig, text) = merged(file, overrides)?;
    let in_file = text.as_ref().map(|(p, t)| unknown_keys(t, p)).unwrap_or_default();
    for w in unknown_env(std::env::vars().map(|(k, _)| k)).into_iter().chain(in_file) {
        eprintln!("{w}");
    }
    // figment names keys with its profile ("default.batch.count"); users wrote "batch.count".
    let raw: Raw = fig
        .extract()
        .map_err(|e| anyhow!("invalid configuration: {}", e.to_string().replace("key \"default.", "key \"")))?;
    validate(raw, text.as_ref().map(|(p, t)| (p.as_path(), t.as_str())))
}

/// Settings whose values are secret, shown as "***".
const SECRET_KEYS: &[&str] = &["mqtt.password"];

/// The effective configuration as TOML, secrets as "***" (and the store
/// URL's password hidden). With `origins`, one `key = value` line per setting
/// with where it came from: default, the file, the environment, or a flag.
pub fn effective(file: Option<&Path>, overrides: &Overrides, origins: bool) -> Result<String, edgeseal_agent::Error> {
    let run = || -> Result<String> {
        let (fig, _) = merged(file, overrides)?;
        let mut table: toml::Table = fig.extract().map_err(|e| anyhow!("invalid configuration: {e}"))?;
        for key in SECRET_KEYS {
            let (section, name) = key.split_once('.').expect("a dotted key");
            if let Some(v) = table.get_mut(section).and_then(|t| t.get_mut(name))
                && v.as_str().is_some_and(|s| !s.is_empty())
            {
                *v = toml::Value::String("***".into());
            }
        }
        if let Some(toml::Value::String(url)) = table.get_mut("store") {
            *url = edgeseal_store::redact_url(url);
        }
        if !origins {
            return Ok(toml::to_string_pretty(&table)?);
        }
        let mut out = String::new();
        let mut leaves = Vec::new();
        flatten("", &toml::Value::Table(table), &mut leaves);
        for (key, value) in leaves {
            let from = match fig.find_metadata(&key).map(|m| m.name.to_string()) {
                Some(n) if n.contains("environment") => format!("env {}", env_name(&key)),
                Some(n) if n.contains("TOML file") => "file".to_string(),
                Some(n) if n.contains("Serialized") || n.contains("Overrides") => "flag".to_string(),
                _ => "default".to_string(),
            };
            out.push_str(&format!("{key} = {value}  # {from}\n"));
        }
        Ok(out)
    };
    run().map_err(|e| edgeseal_agent::Error::Config(format!("{e:#}")))
}

/// Every leaf of `v` as (dotted key, value); arrays of tables stay whole.
fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
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
    let mut keep =
        Keep { default: optional_duration("retention.keep", &raw.retention.keep)?, per_stream: HashMap::new() };
    for (name, o) in raw.streams {
        let stream =
            StreamName::new(name.clone()).with_context(|| format!("invalid configuration: [streams.{name}]"))?;
        if let Some(k) = &o.keep {
            keep.per_stream.insert(stream.clone(), optional_duration(&format!("streams.{name}.keep"), k)?);
        }
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
    let mut cloudsync_listen = None;
    for (key, v) in [("web.listen", &raw.web.listen), ("web.cloudsync_listen", &raw.web.cloudsync_listen)] {
        if !v.trim().is_empty() {
            let addr: std::net::SocketAddr = v.trim().parse().map_err(|_| {
                anyhow!("invalid configuration: {key} = {v:?} is not ADDRESS:PORT (e.g. 127.0.0.1:5000)")
            })?;
            if key == "web.cloudsync_listen" {
                cloudsync_listen = Some(addr);
            }
            web_listen.push(addr);
        }
    }
    let web_tls = match (raw.web.tls, raw.web.cert.trim(), raw.web.key.trim()) {
        (false, _, _) => None,
        (true, "", "") => Some(WebTls { files: None }),
        (true, cert, key) if !cert.is_empty() && !key.is_empty() => {
            Some(WebTls { files: Some((PathBuf::from(cert), PathBuf::from(key))) })
        }
        _ => bail!("invalid configuration: web.cert and web.key go together: set both, or neither to have them made"),
    };
    let name = if raw.name.trim().is_empty() { host_name() } else { raw.name };
    let store_url = if raw.store.trim().is_empty() {
        format!("sqlite://{}", raw.data_dir.join("store.db").display())
    } else {
        raw.store.trim().to_string()
    };
    if store_url == edgeseal_store::THROUGH_BROKER && mqtt.broker.is_none() && embedded.is_none() {
        bail!(
            "invalid configuration: store = \"broker\" hands batches to `edgeseal ingest` through an MQTT broker, but there is none: set mqtt.broker (or broker.listen for the embedded one)"
        );
    }
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
        resend_after: duration("outbox.resend_after", &raw.outbox.resend_after)?,
        keep,
        retention_every: positive_duration("retention.every", &raw.retention.every)?,
        sensors,
        grovepi_bus: raw.grovepi.bus,
        lcd,
        mqtt,
        embedded,
        web_listen,
        web_tls,
        cloudsync_listen,
        time_zone: edgeseal_agent::times::Zone::parse(&raw.ui.time_zone)
            .map_err(|e| anyhow!("invalid configuration: ui.time_zone: {e}"))?,
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

fn positive_duration(key: &str, s: &str) -> Result<Duration> {
    optional_duration(key, s)?.ok_or_else(|| anyhow!("invalid configuration: {key} = {s:?} must be a duration above 0"))
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
mod env_tests {
    use super::*;

    #[test]
    fn a_misspelt_key_in_the_file_names_the_key_it_missed() {
        let text = "storage = \"x\"\n[mqtt]\npasword = \"p\"\n[streams.t]\ncuont = 3\n[[sensor]]\nkind = \"simulated\"\nmodle = \"t\"\n[batch]\ncount = 5\n";
        let w = unknown_keys(text, Path::new("e.toml"));
        assert_eq!(w.len(), 4, "{w:#?}");
        for (key, near) in [
            ("storage", "store"),
            ("mqtt.pasword", "password"),
            ("streams.t.cuont", "count"),
            ("sensor #1.modle", "model"),
        ] {
            assert!(
                w.iter().any(|l| l.contains(&format!("{key:?}")) && l.contains(&format!("did you mean {near:?}"))),
                "{key}: {w:#?}"
            );
        }
    }

    #[test]
    fn a_misspelt_variable_names_the_setting_it_missed() {
        let vars =
            ["EDGESEAL_BATCH_COUNT", "EDGESEAL_BATCH__COUNT", "EDGESEAL_PASSPHRASE", "EDGESEAL_TEST_POSTGRES", "PATH"];
        let w = unknown_env(vars.iter().map(|s| s.to_string()));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("EDGESEAL_BATCH_COUNT") && w[0].contains("did you mean EDGESEAL_BATCH__COUNT?"), "{w:?}");
    }
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
