//! `edgeseal pki …` and `edgeseal broker mosquitto-config`: files on disk for
//! what `edgeseal_mqtt` generates. Keys and password files are written 0600.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use edgeseal_mqtt::mosquitto::{self, Level, Settings};
use edgeseal_mqtt::pki::{self, Issued, KeyPem, Leaf};
use time::OffsetDateTime;

use crate::cli::{BrokerCommand, PkiCommand, PkiOut};
use crate::config::Config;

fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let _ = fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    println!("  wrote {}{}", path.display(), if mode & 0o077 == 0 { " (0600)" } else { "" });
    Ok(())
}

fn out_dir(cfg: &Config, out: &PkiOut) -> Result<PathBuf> {
    let dir = out.out.clone().unwrap_or_else(|| cfg.data_dir.join("pki"));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn load_ca(dir: &Path) -> Result<Issued> {
    let read = |f: &str| {
        fs::read_to_string(dir.join(f)).with_context(|| {
            format!("no CA in {} (missing {f}): run `edgeseal pki ca --out {}` first", dir.display(), dir.display())
        })
    };
    Ok(Issued { cert: read("ca.pem")?, key: KeyPem::new(read("ca-key.pem")?) })
}

fn save(dir: &Path, stem: &str, issued: &Issued) -> Result<()> {
    write(&dir.join(format!("{stem}.pem")), &issued.cert, 0o644)?;
    write(&dir.join(format!("{stem}-key.pem")), issued.key.expose_secret(), 0o600)
}

fn new_ca(dir: &Path, name: &str, days: i64) -> Result<Issued> {
    let ca = pki::new_ca(name, OffsetDateTime::now_utc(), days)?;
    save(dir, "ca", &ca)?;
    Ok(ca)
}

pub fn pki(cfg: &Config, command: PkiCommand) -> Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    match command {
        PkiCommand::Ca { out, name, force } => {
            let dir = out_dir(cfg, &out)?;
            if dir.join("ca.pem").exists() && !force {
                bail!(
                    "{} already holds a CA; pass --force to replace it (certificates it signed stop verifying)",
                    dir.display()
                );
            }
            new_ca(&dir, &name, out.days)?;
        }
        PkiCommand::Server { out, dns, ip } => {
            let dir = out_dir(cfg, &out)?;
            let ca = load_ca(&dir)?;
            save(&dir, "server", &pki::issue(&ca, &Leaf::Server { dns, ips: ip }, now, out.days)?)?;
        }
        PkiCommand::Client { name, out } => {
            let dir = out_dir(cfg, &out)?;
            let ca = load_ca(&dir)?;
            save(&dir, &name, &pki::issue(&ca, &Leaf::Client { name: name.clone() }, now, out.days)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn broker(command: BrokerCommand) -> Result<ExitCode> {
    let BrokerCommand::MosquittoConfig { level, mutual_tls, out, port, bind, user, dns, ip } = command;
    let level = Level::from_number(level)?;
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let dir = fs::canonicalize(&out)?;
    let now = OffsetDateTime::now_utc();
    let days = 825;
    let users = if user.is_empty() { vec!["edgeseal".to_string()] } else { user };
    let settings = Settings { level, port: port.unwrap_or(level.default_port()), bind: &bind, mutual_tls, dir: &dir };
    let conf = mosquitto::config(&settings)?;
    println!(
        "mosquitto security level {level:?}{} in {}:",
        if mutual_tls { " with mutual TLS" } else { "" },
        dir.display()
    );
    if level.uses_tls() {
        let ca = match load_ca(&dir) {
            Ok(ca) => ca,
            Err(_) => new_ca(&dir, "edgeseal CA", days)?,
        };
        let dns = if dns.is_empty() && ip.is_empty() { vec!["localhost".to_string()] } else { dns };
        let ips = if ip.is_empty() { vec![std::net::IpAddr::from([127, 0, 0, 1])] } else { ip };
        save(&dir, "server", &pki::issue(&ca, &Leaf::Server { dns, ips }, now, days)?)?;
        if mutual_tls {
            for u in &users {
                save(&dir, u, &pki::issue(&ca, &Leaf::Client { name: u.clone() }, now, days)?)?;
            }
        }
    }
    if level == Level::TlsPassword {
        let mut lines = String::new();
        for u in &users {
            let mut secret = [0u8; 18];
            let mut salt = [0u8; 12];
            getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
            getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
            let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
            lines.push_str(&mosquitto::password_line(u, &password, salt)?);
            lines.push('\n');
            write(&dir.join(format!("{u}.password")), &format!("{password}\n"), 0o600)?;
        }
        write(&dir.join("passwd"), &lines, 0o600)?;
    }
    write(&dir.join("mosquitto.conf"), &conf, 0o644)?;
    // mosquitto started as root drops to its own user before reading these.
    let broker_files: Vec<PathBuf> =
        [dir.join("server-key.pem"), dir.join("passwd")].into_iter().filter(|p| p.exists()).collect();
    if !broker_files.is_empty() {
        match (running_as_root(), system_user("mosquitto")) {
            (true, Some((uid, gid))) => {
                for f in &broker_files {
                    std::os::unix::fs::chown(f, Some(uid), Some(gid))
                        .with_context(|| format!("cannot hand {} to the mosquitto user", f.display()))?;
                }
                println!("  gave the broker's key and password file to the mosquitto user (still 0600)");
            }
            _ => println!(
                "If mosquitto runs as another user, let it read: chown mosquitto {}",
                broker_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")
            ),
        }
    }
    println!("Start it with: mosquitto -c {}", dir.join("mosquitto.conf").display());
    Ok(ExitCode::SUCCESS)
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
