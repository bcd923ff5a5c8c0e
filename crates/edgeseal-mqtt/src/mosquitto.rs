//! mosquitto 2 configuration for the original CloudSync security levels:
//!
//! | level | listener | clients authenticate with |
//! |---|---|---|
//! | 1 | 1883, plain | nothing (anonymous) |
//! | 2 | 8883, TLS | nothing (anonymous), the broker by its certificate |
//! | 3 | 8883, TLS | user name and password (mosquitto's password file) |
//!
//! and, with `mutual_tls`, client certificates whose common name is the user name.

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use time::OffsetDateTime;

use crate::Error;
use crate::pki::{self, Issued, Leaf};

/// PBKDF2 rounds in the password file, as `mosquitto_passwd` writes them.
pub const PASSWORD_ITERATIONS: u32 = 101;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Anonymous,
    Tls,
    TlsPassword,
}

impl Level {
    pub fn from_number(n: u8) -> Result<Level, Error> {
        match n {
            1 => Ok(Level::Anonymous),
            2 => Ok(Level::Tls),
            3 => Ok(Level::TlsPassword),
            _ => Err(Error::BadSetting(format!(
                "security level {n} does not exist: 1 = anonymous on 1883, 2 = TLS on 8883, 3 = TLS and passwords"
            ))),
        }
    }

    pub fn default_port(self) -> u16 {
        if self == Level::Anonymous { 1883 } else { 8883 }
    }

    /// "1 (anonymous)", "2 (TLS)", "3 (TLS and passwords)".
    pub fn describe(self) -> &'static str {
        match self {
            Level::Anonymous => "1 (anonymous)",
            Level::Tls => "2 (TLS)",
            Level::TlsPassword => "3 (TLS and passwords)",
        }
    }

    pub fn uses_tls(self) -> bool {
        self != Level::Anonymous
    }
}

/// What goes into a `mosquitto.conf`.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    pub level: Level,
    pub port: u16,
    pub bind: &'a str,
    pub mutual_tls: bool,
    /// Directory holding ca.pem, server.pem, server-key.pem and passwd.
    pub dir: &'a Path,
}

/// The text of `mosquitto.conf`.
pub fn config(s: &Settings<'_>) -> Result<String, Error> {
    if s.mutual_tls && !s.level.uses_tls() {
        return Err(Error::BadSetting("mutual TLS needs TLS: use level 2 or 3".into()));
    }
    let path = |f: &str| s.dir.join(f).display().to_string();
    let mut c = String::new();
    let _ = writeln!(c, "# mosquitto 2 configuration written by `edgeseal broker mosquitto-config`.");
    let _ = writeln!(c, "# Security level {:?}{}.", s.level, if s.mutual_tls { ", mutual TLS" } else { "" });
    let _ = writeln!(c, "per_listener_settings true");
    let _ = writeln!(c, "persistence false");
    // mosquitto's default of 1000 drops QoS 1 messages for a subscriber that falls behind.
    let _ = writeln!(c, "max_queued_messages 100000");
    let _ = writeln!(c, "listener {} {}", s.port, s.bind);
    if s.level.uses_tls() {
        let _ = writeln!(c, "cafile {}", path("ca.pem"));
        let _ = writeln!(c, "certfile {}", path("server.pem"));
        let _ = writeln!(c, "keyfile {}", path("server-key.pem"));
        let _ = writeln!(c, "tls_version tlsv1.2");
    }
    if s.mutual_tls {
        let _ = writeln!(c, "require_certificate true");
        let _ = writeln!(c, "use_identity_as_username true");
    }
    match (s.level, s.mutual_tls) {
        (Level::TlsPassword, _) => {
            let _ = writeln!(c, "allow_anonymous false");
            let _ = writeln!(c, "password_file {}", path("passwd"));
        }
        (_, true) => {
            let _ = writeln!(c, "allow_anonymous false");
        }
        _ => {
            let _ = writeln!(c, "allow_anonymous true");
        }
    }
    Ok(c)
}

/// One line of a mosquitto password file: `user:$7$iterations$salt$hash`,
/// PBKDF2-HMAC-SHA512 over the password (as `mosquitto_passwd` writes it).
pub fn password_line(user: &str, password: &str, salt: [u8; 12]) -> Result<String, Error> {
    if user.is_empty() || user.contains([':', '\n']) {
        return Err(Error::BadSetting(format!("{user:?} is not a valid user name for a password file")));
    }
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), &salt, PASSWORD_ITERATIONS, &mut hash);
    Ok(format!("{user}:$7${PASSWORD_ITERATIONS}${}${}", B64.encode(salt), B64.encode(hash)))
}

/// What [`write_setup`] wrote.
#[derive(Debug, Default)]
pub struct Written {
    /// Every file, and whether it is private (0600).
    pub files: Vec<(PathBuf, bool)>,
    /// Files the broker itself must be able to read (its key, the password file).
    pub broker_secrets: Vec<PathBuf>,
    /// Those were handed to the `mosquitto` user (we run as root and it exists).
    pub handed_to_broker_user: bool,
}

/// Writes everything a mosquitto needs for `s` into `s.dir`: a CA (kept if
/// present), the broker certificate for `dns`/`ips` (default localhost and
/// 127.0.0.1), client certificates for `users` under mutual TLS, generated
/// passwords (`USER.password`, 0600) and the password file for level 3, and
/// `mosquitto.conf`. With `for_mosquitto`, the files the broker reads are
/// handed to the `mosquitto` user when we run as root (it drops to that user).
pub fn write_setup(
    s: &Settings<'_>,
    users: &[String],
    dns: &[String],
    ips: &[IpAddr],
    for_mosquitto: bool,
) -> Result<Written, Error> {
    let conf = config(s)?;
    let mut w = Written::default();
    let now = OffsetDateTime::now_utc();
    let days = 825;
    if s.level.uses_tls() {
        let ca = match pki::load(s.dir, "ca") {
            Ok(ca) => ca,
            Err(_) => {
                let ca = pki::new_ca("edgeseal CA", now, days)?;
                save(&mut w, s.dir, "ca", &ca)?;
                ca
            }
        };
        let dns = if dns.is_empty() && ips.is_empty() { vec!["localhost".to_string()] } else { dns.to_vec() };
        let ips = if ips.is_empty() { vec![IpAddr::from([127, 0, 0, 1])] } else { ips.to_vec() };
        save(&mut w, s.dir, "server", &pki::issue(&ca, &Leaf::Server { dns, ips }, now, days)?)?;
        w.broker_secrets.push(s.dir.join("server-key.pem"));
        if s.mutual_tls {
            for u in users {
                save(&mut w, s.dir, u, &pki::issue(&ca, &Leaf::Client { name: u.clone() }, now, days)?)?;
            }
        }
    }
    if s.level == Level::TlsPassword {
        let mut lines = String::new();
        for u in users {
            let mut secret = [0u8; 18];
            let mut salt = [0u8; 12];
            random(&mut secret)?;
            random(&mut salt)?;
            let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
            lines.push_str(&password_line(u, &password, salt)?);
            lines.push('\n');
            write(&mut w, &s.dir.join(format!("{u}.password")), &format!("{password}\n"), true)?;
        }
        write(&mut w, &s.dir.join("passwd"), &lines, true)?;
        w.broker_secrets.push(s.dir.join("passwd"));
    }
    write(&mut w, &s.dir.join("mosquitto.conf"), &conf, false)?;
    // mosquitto started as root drops to its own user before reading these.
    if for_mosquitto
        && running_as_root()
        && let Some((uid, gid)) = system_user("mosquitto")
    {
        for f in &w.broker_secrets {
            std::os::unix::fs::chown(f, Some(uid), Some(gid)).map_err(|source| Error::Io {
                what: "cannot hand to the mosquitto user",
                path: f.clone(),
                source,
            })?;
        }
        w.handed_to_broker_user = true;
    }
    Ok(w)
}

fn random(buf: &mut [u8]) -> Result<(), Error> {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new().fill(buf).map_err(|_| Error::NoRandomness)
}

fn save(w: &mut Written, dir: &Path, stem: &str, issued: &Issued) -> Result<(), Error> {
    let [cert, key] = pki::save(dir, stem, issued)?;
    w.files.push((cert, false));
    w.files.push((key, true));
    Ok(())
}

fn write(w: &mut Written, path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    pki::write_file(path, contents, private)?;
    w.files.push((path.to_path_buf(), private));
    Ok(())
}

fn running_as_root() -> bool {
    // The effective uid is the second number of the Uid: line.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// uid and gid of a user in /etc/passwd.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_mosquitto_passwd() {
        // Written by `mosquitto_passwd -b pw alice secret` (mosquitto 2.0.11).
        let line = "alice:$7$101$BLDSleXMMn2K0epy$3TSdyp0pqPnlR2DCK+nfOolz0kXdlyHETR7dHoS+G7GJTfBbF+Us76GRgX5a51Ug2qeKj+0IEXnvqtc5pcmPEg==";
        let salt: [u8; 12] = B64.decode("BLDSleXMMn2K0epy").unwrap().try_into().unwrap();
        assert_eq!(password_line("alice", "secret", salt).unwrap(), line);
    }

    #[test]
    fn levels() {
        let dir = Path::new("/etc/edgeseal/broker");
        let s = |level, mutual_tls| Settings { level, port: level.default_port(), bind: "0.0.0.0", mutual_tls, dir };
        let c1 = config(&s(Level::Anonymous, false)).unwrap();
        assert!(c1.contains("listener 1883 0.0.0.0") && c1.contains("allow_anonymous true") && !c1.contains("cafile"));
        assert!(c1.contains("max_queued_messages 100000"));
        let c3 = config(&s(Level::TlsPassword, false)).unwrap();
        assert!(c3.contains("listener 8883") && c3.contains("password_file /etc/edgeseal/broker/passwd"));
        assert!(c3.contains("allow_anonymous false"));
        let m = config(&s(Level::Tls, true)).unwrap();
        assert!(m.contains("require_certificate true") && m.contains("use_identity_as_username true"));
        assert!(config(&s(Level::Anonymous, true)).is_err());
        assert!(Level::from_number(4).is_err());
    }
}
