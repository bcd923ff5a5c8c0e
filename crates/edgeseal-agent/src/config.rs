//! The validated, typed configuration. The binary builds it from its layers
//! (defaults < file < environment < flags); nothing here reads the
//! environment or a configuration file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeseal_core::StreamName;
use edgeseal_mqtt::broker::{self, AGENT_USER};
use edgeseal_mqtt::link::{BrokerUrl, LinkOptions, Password, Protocol};
use edgeseal_mqtt::mosquitto::Level;
use edgeseal_sensors::batcher::Policy;
use edgeseal_sensors::grovepi::Port;
use edgeseal_sensors::grovepi::sensor::GroveKind;
use edgeseal_sensors::simulated::Kind;

use crate::{Error, Result};

/// How to reach the MQTT broker.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Unsigned batches a receiver holds until a signature covers them.
    pub tentative: TentativeLimits,
    pub broker: Option<BrokerUrl>,
    pub prefix: String,
    pub protocol: Protocol,
    pub username: Option<String>,
    pub password: Option<Password>,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// How many bytes of unsigned batches a receiver holds, per stream and in
/// all, until a signature covers them (`mqtt.tentative_max`,
/// `mqtt.tentative_total_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TentativeLimits {
    pub stream: usize,
    pub total: usize,
}

impl Default for TentativeLimits {
    fn default() -> Self {
        TentativeLimits { stream: 4 << 20, total: 16 << 20 }
    }
}

impl MqttConfig {
    /// These settings for the embedded broker at `url`: what is not set here
    /// comes from the broker's directory (its CA, the `edgeseal` user's
    /// password and client certificate, where present).
    pub fn for_embedded(&self, url: BrokerUrl, e: &broker::Settings) -> MqttConfig {
        let file = |f: &str| Some(e.dir.join(f)).filter(|p| p.exists());
        let mut m = self.clone();
        m.broker = Some(url);
        if e.level.uses_tls() && m.ca.is_none() {
            m.ca = file("ca.pem");
        }
        if e.level == Level::TlsPassword && m.username.is_none() {
            let password = file(&format!("{AGENT_USER}.password")).and_then(|p| std::fs::read_to_string(p).ok());
            if let Some(p) = password {
                m.username = Some(AGENT_USER.to_string());
                m.password = Some(Password::new(p.trim().to_string()));
            }
        }
        if e.mutual_tls && m.client_cert.is_none() {
            m.client_cert = file(&format!("{AGENT_USER}.pem")).zip(file(&format!("{AGENT_USER}-key.pem")));
        }
        m
    }

    /// Link options for `client_id`, reading the TLS files. Fails when no broker is configured.
    pub fn link_options(&self, client_id: &str) -> Result<LinkOptions> {
        let Some(url) = self.broker.clone() else {
            return Err(Error::NoBroker(
                "no MQTT broker is configured: set mqtt.broker in edgeseal.toml, EDGESEAL_MQTT__BROKER or --broker"
                    .into(),
            ));
        };
        let mut o = LinkOptions::new(url, client_id);
        o.protocol = self.protocol;
        o.username = self.username.clone();
        o.password = self.password.clone();
        let read = |p: &Path, what: &'static str| {
            std::fs::read(p).map_err(|source| Error::Io { what, path: p.to_path_buf(), source })
        };
        if let Some(ca) = &self.ca {
            o.ca_pem = Some(read(ca, "cannot read the CA certificate (mqtt.ca)")?);
        }
        if let Some((cert, key)) = &self.client_cert {
            o.client_cert = Some((
                read(cert, "cannot read the client certificate (mqtt.client_cert)")?,
                read(key, "cannot read the client key (mqtt.client_key)")?,
            ));
        }
        Ok(o)
    }
}

/// A sensor to run.
#[derive(Debug, Clone, PartialEq)]
pub enum SensorSpec {
    Simulated { kind: Kind, stream: StreamName, interval: Duration, seed: u64 },
    Hwmon { interval: Duration, sysfs: PathBuf },
    JsonLines { command: Option<String> },
    Grove { kind: GroveKind, port: Port, interval: Duration, stream: Option<String> },
}

impl SensorSpec {
    /// The streams this sensor is known to produce before it runs (none for
    /// those that name theirs as they go: hwmon, JSON lines).
    pub fn streams(&self) -> Vec<StreamName> {
        match self {
            SensorSpec::Simulated { stream, .. } => vec![stream.clone()],
            SensorSpec::Grove { kind, port, stream, .. } => {
                edgeseal_sensors::grovepi::sensor::GroveSensor::check(*kind, *port, stream.as_deref())
                    .unwrap_or_default()
            }
            SensorSpec::Hwmon { .. } | SensorSpec::JsonLines { .. } => Vec::new(),
        }
    }

    /// What `--sensor KIND` stands for: simulated, hwmon, stdin or none.
    pub fn from_flag(flag: &str) -> Result<Vec<SensorSpec>> {
        Ok(match flag {
            "simulated" => [Kind::Temperature, Kind::Humidity, Kind::AirQuality]
                .into_iter()
                .enumerate()
                .map(|(i, kind)| SensorSpec::Simulated {
                    kind,
                    stream: StreamName::new(kind.name()).expect("built-in names are valid"),
                    interval: Duration::from_secs(1),
                    seed: i as u64 + 1,
                })
                .collect(),
            "hwmon" => vec![SensorSpec::Hwmon { interval: Duration::from_secs(10), sysfs: PathBuf::from("/sys") }],
            "stdin" => vec![SensorSpec::JsonLines { command: None }],
            "none" => vec![],
            other => return Err(Error::bad(format!("--sensor {other:?}: use simulated, hwmon, stdin or none"))),
        })
    }
}

/// How long streams keep their batches in the store (`retention.keep`, and
/// `[streams.NAME] keep`); `None`: for ever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keep {
    pub default: Option<Duration>,
    pub per_stream: HashMap<StreamName, Option<Duration>>,
}

impl Keep {
    /// What `stream` keeps.
    pub fn of(&self, stream: &StreamName) -> Option<Duration> {
        self.per_stream.get(stream).copied().unwrap_or(self.default)
    }
}

/// The default of `retention.keep`: a year and a month, so a year of data is always there.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(400 * 24 * 3600);

/// The Grove LCD as an output.
#[derive(Debug, Clone, PartialEq)]
pub struct LcdConfig {
    pub enabled: bool,
    pub streams: Vec<StreamName>,
    pub refresh: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub name: String,
    pub store_url: String,
    pub store_timeout: Duration,
    pub log: String,
    pub batch: Policy,
    pub per_stream: HashMap<StreamName, Policy>,
    pub retry_max: Duration,
    pub checkpoint_every: Duration,
    /// With `store = "broker"`: how long published batches wait for an ingest's
    /// acknowledgement before they are published again (`outbox.resend_after`).
    pub resend_after: Duration,
    /// How long each stream's batches stay in the store, and how often that is looked at.
    pub keep: Keep,
    pub retention_every: Duration,
    pub sensors: Vec<SensorSpec>,
    /// `/dev/i2c-N`, or `emulated`.
    pub grovepi_bus: String,
    pub lcd: LcdConfig,
    pub mqtt: MqttConfig,
    /// The embedded broker `up` starts (`[broker]`); `None` when `broker.listen` is empty.
    pub embedded: Option<broker::Settings>,
    /// Where `up` serves HTTP (`web.listen` and `web.cloudsync_listen`).
    pub web_listen: Vec<std::net::SocketAddr>,
    /// HTTPS (`web.tls`), with these PEM files (`web.cert`, `web.key`; `None`: made on first use).
    pub web_tls: Option<WebTls>,
    /// Of `web_listen`, the CloudSync port, which stays plain HTTP (its clients are the original's).
    pub cloudsync_listen: Option<std::net::SocketAddr>,
    /// The zone times are shown in by the CLI, the UI and the API (`ui.time_zone`, `--tz`); UTC by default.
    pub time_zone: crate::times::Zone,
}

impl Config {
    /// An agent in `data_dir` with the defaults of `default.toml` but nothing
    /// that reaches out: no sensors, no broker (embedded or other), no web
    /// server, the SQLite store in the data directory. For tests and for
    /// programs that embed the agent and set what they need.
    pub fn new(data_dir: impl Into<PathBuf>, name: &str) -> Config {
        let data_dir = data_dir.into();
        Config {
            store_url: format!("sqlite://{}", data_dir.join("store.db").display()),
            data_dir,
            name: name.to_string(),
            store_timeout: Duration::from_secs(5),
            log: "info".into(),
            batch: Policy::default(),
            per_stream: HashMap::new(),
            retry_max: Duration::from_secs(30),
            checkpoint_every: Duration::from_secs(60),
            resend_after: Duration::from_secs(60),
            keep: Keep { default: Some(DEFAULT_KEEP), per_stream: HashMap::new() },
            retention_every: Duration::from_secs(3600),
            sensors: Vec::new(),
            grovepi_bus: "/dev/i2c-1".into(),
            lcd: LcdConfig { enabled: false, streams: Vec::new(), refresh: Duration::from_secs(2) },
            mqtt: MqttConfig {
                tentative: TentativeLimits::default(),
                broker: None,
                prefix: "edgeseal/v1".into(),
                protocol: Protocol::V311,
                username: None,
                password: None,
                ca: None,
                client_cert: None,
            },
            embedded: None,
            web_listen: Vec::new(),
            web_tls: None,
            cloudsync_listen: None,
            time_zone: crate::times::Zone::UTC,
        }
    }

    /// Whether anything needs the GrovePi bus.
    pub fn uses_grovepi(&self) -> bool {
        self.lcd.enabled || self.sensors.iter().any(|s| matches!(s, SensorSpec::Grove { .. }))
    }

    pub fn state_path(&self) -> PathBuf {
        self.data_dir.join("state.db")
    }

    /// Whether sharing has a broker: `mqtt.broker` or the embedded one.
    pub fn has_broker(&self) -> bool {
        self.mqtt.broker.is_some() || self.embedded.is_some()
    }

    /// Whether this agent keeps no store: `store = "broker"` hands its batches to
    /// `edgeseal ingest` through the broker, and keeps each until acknowledged.
    pub fn stores_through_broker(&self) -> bool {
        self.store_url == edgeseal_store::THROUGH_BROKER
    }

    /// The SQLite file of the store, when the store is SQLite.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        let url = &self.store_url;
        let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
        Some(PathBuf::from(rest.split('?').next().unwrap_or(rest)))
    }

    /// Link options for `client_id`: to `mqtt.broker`, or else to the embedded
    /// broker at `broker.listen` (`up` running it on this machine).
    pub fn link_options(&self, client_id: &str) -> Result<LinkOptions> {
        match (&self.mqtt.broker, &self.embedded) {
            (Some(_), _) => self.mqtt.link_options(client_id),
            (None, Some(e)) => {
                let url = broker::local_url(e.listen, e.level.uses_tls());
                self.mqtt.for_embedded(url, e).link_options(client_id)
            }
            (None, None) => Err(Error::NoBroker(
                "no MQTT broker is configured: set mqtt.broker (or --broker URL), or broker.listen for the embedded broker"
                    .into(),
            )),
        }
    }
}

/// A value written `5` or `"5"` alike (the environment gives numbers for
/// numeric text, and JSON clients write either), for `deserialize_with`.
pub fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Int(u64),
        Float(f64),
    }
    Ok(match Either::deserialize(d)? {
        Either::Text(s) => s,
        Either::Int(n) => n.to_string(),
        Either::Float(f) => f.to_string(),
    })
}

/// `[web] tls`: the certificate and key to serve, or `None` to make them in
/// `<data_dir>/web` on first use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebTls {
    pub files: Option<(std::path::PathBuf, std::path::PathBuf)>,
}
