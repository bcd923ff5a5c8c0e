//! The embedded broker: an MQTT 3.1.1/5 broker inside the agent so that a
//! single machine needs nothing else. It runs on the caller's tokio runtime
//! (mqtt5's broker) behind [`Broker`], at the same security levels as the
//! mosquitto configuration ([`crate::mosquitto`]) and from the same files:
//! `ca.pem`, `server.pem`, `server-key.pem` and a mosquitto-format `passwd`,
//! so one directory serves either broker.
//!
//! The broker sees only sealed batches; its security level protects the
//! metadata (topics, timing) and the service, not the readings.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use mqtt5::broker::auth::{AuthProvider, AuthResult};
use mqtt5::broker::config::{AuthConfig, BrokerConfig, StorageBackend, StorageConfig, TlsConfig};
use mqtt5::broker::{BrokerShutdownHandle, MqttBroker};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;
use tokio::task::JoinHandle;

use crate::Error;
use crate::link::BrokerUrl;
use crate::mosquitto::{self, Level};

/// A running broker. Dropping it without [`Broker::stop`] leaves it running
/// until the runtime ends.
pub trait Broker: Send {
    /// Where it listens (the real port when asked for port 0).
    fn local_addr(&self) -> SocketAddr;
    /// How a client on this machine reaches it.
    fn url(&self) -> BrokerUrl;
    /// Closes the listener and every connection, and waits until it has.
    fn stop(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub level: Level,
    pub mutual_tls: bool,
    /// Holds the TLS files and password file (see the module docs) and,
    /// under `storage/`, the broker's sessions and retained messages.
    pub dir: PathBuf,
}

/// The user (password, client certificate) created for the agent itself.
pub const AGENT_USER: &str = "edgeseal";

impl Settings {
    /// The files the level needs that are not in `dir` yet.
    pub fn missing_files(&self) -> Vec<PathBuf> {
        let mut need = Vec::new();
        if self.level.uses_tls() {
            need.extend(["ca.pem", "server.pem", "server-key.pem"]);
        }
        if self.level == Level::TlsPassword {
            need.push("passwd");
        }
        if self.mutual_tls {
            need.extend(["edgeseal.pem", "edgeseal-key.pem"]);
        }
        need.into_iter().map(|f| self.dir.join(f)).filter(|p| !p.exists()).collect()
    }

    /// Creates what is missing (a CA, a server certificate for localhost and
    /// 127.0.0.1 plus `extra_ips`, the `edgeseal` user's password or client
    /// certificate) exactly as `broker mosquitto-config` would, and returns the
    /// files written. Nothing present is replaced.
    pub fn prepare(&self, extra_ips: &[IpAddr]) -> Result<Vec<(PathBuf, bool)>, Error> {
        if self.mutual_tls && !self.level.uses_tls() {
            return Err(Error::BadSetting("mutual TLS needs TLS: use level 2 or 3".into()));
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
            what: "cannot create",
            path: self.dir.clone(),
            source,
        })?;
        if self.missing_files().is_empty() {
            return Ok(Vec::new());
        }
        let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
        ips.extend(extra_ips.iter().filter(|ip| !ip.is_unspecified() && !ip.is_loopback()));
        let s = mosquitto::Settings {
            level: self.level,
            port: self.listen.port(),
            bind: &self.listen.ip().to_string(),
            mutual_tls: self.mutual_tls,
            dir: &self.dir,
        };
        let users = [AGENT_USER.to_string()];
        Ok(mosquitto::write_setup(&s, &users, &["localhost".to_string()], &ips, false)?.files)
    }
}

/// `ADDRESS[:PORT]` (IPv6 in brackets when a port follows); `default_port` when none is given.
pub fn parse_listen(s: &str, default_port: u16) -> Result<SocketAddr, Error> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.trim_matches(['[', ']']).parse::<IpAddr>().map(|ip| SocketAddr::new(ip, default_port)).map_err(|_| {
        Error::BadSetting(format!(
            "{s:?} is not an IP address with an optional port (e.g. 127.0.0.1:1883, 0.0.0.0, [::1]:8883)"
        ))
    })
}

/// How a client on this machine reaches a broker listening on `addr`.
pub fn local_url(addr: SocketAddr, tls: bool) -> BrokerUrl {
    let ip = if addr.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { addr.ip() };
    // The certificate names 127.0.0.1 (and the listen address), so name it by address.
    BrokerUrl { tls, host: ip.to_string(), port: addr.port() }
}

/// Starts the embedded broker on the current tokio runtime. A taken port is
/// [`Error::PortTaken`].
pub async fn start(s: &Settings) -> Result<Box<dyn Broker>, Error> {
    if let Some(first) = s.missing_files().first() {
        return Err(Error::BadSetting(format!(
            "the broker's {} is missing (security level {:?}): run `edgeseal broker` once to create it, or `edgeseal broker mosquitto-config --out {}`",
            first.display(),
            s.level,
            s.dir.display()
        )));
    }
    // mqtt5 reports a failed bind only as text; find out ourselves first.
    if let Err(e) = std::net::TcpListener::bind(s.listen) {
        return Err(if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::PortTaken(s.listen)
        } else {
            Error::Listen { addr: s.listen, source: e }
        });
    }
    let auth: Arc<dyn AuthProvider> = Arc::new(Access::load(s)?);
    let storage = StorageConfig::new()
        .with_backend(StorageBackend::File)
        .with_base_dir(s.dir.join("storage"))
        .with_persistence(true)
        // A subscriber that is slower than its publisher for a while (or
        // offline) must not lose messages the broker acknowledged.
        .with_max_queued_messages_per_client(1_000_000)
        .with_max_queued_bytes_per_client(512 * 1024 * 1024);
    let mut config = BrokerConfig::new()
        .with_storage(storage)
        .with_sys_topics_enabled(false)
        .with_maximum_qos(2)
        // mqtt5's own file-based check stays off: `Access` decides who connects.
        .with_auth(AuthConfig::new().with_allow_anonymous(true));
    if s.level.uses_tls() {
        let mut tls =
            TlsConfig::new(s.dir.join("server.pem"), s.dir.join("server-key.pem")).with_bind_addresses(vec![s.listen]);
        if s.mutual_tls {
            tls = tls.with_ca_file(s.dir.join("ca.pem")).with_require_client_cert(true);
        }
        config = config.with_bind_addresses(Vec::new()).with_tls(tls);
    } else {
        config = config.with_bind_addresses(vec![s.listen]);
    }
    let broker =
        MqttBroker::with_config(config).await.map_err(|e| Error::BrokerStart(e.to_string()))?.with_auth_provider(auth);
    let addr = if s.level.uses_tls() { broker.tls_local_addr() } else { broker.local_addr() }
        .ok_or_else(|| Error::BrokerStart("it has no listener".into()))?;
    let mut ready = broker.ready_receiver();
    let shutdown = broker.shutdown_handle();
    let mut broker = broker;
    let task = tokio::spawn(async move {
        if let Err(e) = broker.run().await {
            tracing::error!("the embedded broker stopped: {e}");
        }
    });
    // Accepting from here on; wait for it so a client connecting next is served.
    let _ = tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r)).await;
    Ok(Box::new(Running { addr, tls: s.level.uses_tls(), shutdown, task }))
}

struct Running {
    addr: SocketAddr,
    tls: bool,
    shutdown: BrokerShutdownHandle,
    task: JoinHandle<()>,
}

impl Broker for Running {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn url(&self) -> BrokerUrl {
        local_url(self.addr, self.tls)
    }

    fn stop(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.shutdown.shutdown();
            let mut task = self.task;
            if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
                task.abort();
            }
        })
    }
}

/// Who may connect: anonymous clients below level 3, and at level 3 the
/// users of the mosquitto-format password file (PBKDF2-SHA512, `$7$`).
struct Access {
    anonymous: bool,
    users: HashMap<String, Hashed>,
}

struct Hashed {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl Access {
    fn load(s: &Settings) -> Result<Access, Error> {
        if s.level != Level::TlsPassword {
            return Ok(Access { anonymous: true, users: HashMap::new() });
        }
        let path = s.dir.join("passwd");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            what: "cannot read the password file",
            path: path.clone(),
            source,
        })?;
        Ok(Access { anonymous: false, users: parse_password_file(&text, &path)? })
    }

    fn check(&self, user: Option<&str>, password: Option<&[u8]>) -> bool {
        if self.anonymous {
            return true; // as mosquitto without a password file: names are not checked
        }
        let (Some(user), Some(password)) = (user, password) else {
            return false;
        };
        let Some(h) = self.users.get(user) else {
            return false;
        };
        ring::pbkdf2::verify(ring::pbkdf2::PBKDF2_HMAC_SHA512, h.iterations, &h.salt, password, &h.hash).is_ok()
    }
}

/// Reads `user:$7$iterations$salt$hash` lines (blank lines and `#` comments allowed).
fn parse_password_file(text: &str, path: &Path) -> Result<HashMap<String, Hashed>, Error> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Error::BadSetting(format!("{} line {}: {why}", path.display(), n + 1));
        let (user, hashed) = line.split_once(':').ok_or_else(|| bad("expected USER:HASH"))?;
        let parts: Vec<&str> = hashed.split('$').collect();
        let ["", "7", iterations, salt, hash] = parts[..] else {
            return Err(bad("only mosquitto's PBKDF2-SHA512 hashes ($7$, as mosquitto_passwd writes) are supported"));
        };
        let iterations = iterations.parse().ok().and_then(NonZeroU32::new).ok_or_else(|| bad("bad iteration count"))?;
        let salt = B64.decode(salt).map_err(|_| bad("the salt is not base64"))?;
        let hash = B64.decode(hash).map_err(|_| bad("the hash is not base64"))?;
        if hash.len() != 64 {
            return Err(bad("the hash is not 64 bytes"));
        }
        users.insert(user.to_string(), Hashed { iterations, salt, hash });
    }
    Ok(users)
}

type Answer<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl AuthProvider for Access {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        _client_addr: SocketAddr,
    ) -> Answer<'a, mqtt5::Result<AuthResult>> {
        let ok = self.check(connect.username.as_deref(), connect.password.as_deref());
        Box::pin(async move {
            Ok(if ok {
                match &connect.username {
                    Some(u) => AuthResult::success_with_user(u.clone()),
                    None => AuthResult::success(),
                }
            } else {
                AuthResult::fail(ReasonCode::BadUsernameOrPassword)
            })
        })
    }

    fn authorize_publish<'a>(&'a self, _client: &str, _user: Option<&'a str>, _topic: &'a str) -> Answer<'a, bool> {
        Box::pin(async { true })
    }

    fn authorize_subscribe<'a>(&'a self, _client: &str, _user: Option<&'a str>, _filter: &'a str) -> Answer<'a, bool> {
        Box::pin(async { true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_file_as_mosquitto_passwd_writes_it() {
        // Written by `mosquitto_passwd -b pw alice secret` (mosquitto 2.0.11).
        let text = "alice:$7$101$BLDSleXMMn2K0epy$3TSdyp0pqPnlR2DCK+nfOolz0kXdlyHETR7dHoS+G7GJTfBbF+Us76GRgX5a51Ug2qeKj+0IEXnvqtc5pcmPEg==\n";
        let access = Access { anonymous: false, users: parse_password_file(text, Path::new("passwd")).unwrap() };
        assert!(access.check(Some("alice"), Some(b"secret")));
        assert!(!access.check(Some("alice"), Some(b"Secret")));
        assert!(!access.check(Some("bob"), Some(b"secret")));
        assert!(!access.check(None, None));
        assert!(!access.check(Some("alice"), None));
        for bad in ["alice", "alice:$6$abc$def", "alice:$7$x$AA==$AA==", "alice:$7$101$!!$AA=="] {
            let e = parse_password_file(bad, Path::new("passwd")).err().unwrap().to_string();
            assert!(e.starts_with("passwd line 1: "), "{e}");
        }
        let open = Access { anonymous: true, users: HashMap::new() };
        assert!(open.check(None, None) && open.check(Some("x"), Some(b"y")));
    }
}
