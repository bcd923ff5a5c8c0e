//! `edgeseal pki …` and `edgeseal broker mosquitto-config`: files on disk for
//! what `edgeseal_mqtt` generates. Keys and password files are written 0600.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use edgeseal_mqtt::mosquitto::{self, Level, Settings};
use edgeseal_mqtt::pki::{self, Issued, Leaf};
use time::OffsetDateTime;

use crate::cli::{BrokerCommand, PkiCommand, PkiOut};
use edgeseal_agent::config::Config;

fn out_dir(cfg: &Config, out: &PkiOut) -> Result<PathBuf> {
    let dir = out.out.clone().unwrap_or_else(|| cfg.data_dir.join("pki"));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn load_ca(dir: &Path) -> Result<Issued> {
    pki::load(dir, "ca").with_context(|| {
        let missing = ["ca.pem", "ca-key.pem"].into_iter().find(|f| !dir.join(f).exists()).unwrap_or("ca.pem");
        format!("no CA in {} (missing {missing}): run `edgeseal pki ca --out {}` first", dir.display(), dir.display())
    })
}

fn save(dir: &Path, stem: &str, issued: &Issued) -> Result<()> {
    let [cert, key] = pki::save(dir, stem, issued)?;
    println!("  wrote {}\n  wrote {} (0600)", cert.display(), key.display());
    Ok(())
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
    let users = if user.is_empty() { vec!["edgeseal".to_string()] } else { user };
    let settings = Settings { level, port: port.unwrap_or(level.default_port()), bind: &bind, mutual_tls, dir: &dir };
    mosquitto::config(&settings)?; // reject impossible combinations before writing anything
    println!(
        "mosquitto security level {level:?}{} in {}:",
        if mutual_tls { " with mutual TLS" } else { "" },
        dir.display()
    );
    let written = mosquitto::write_setup(&settings, &users, &dns, &ip, true)?;
    for (path, private) in &written.files {
        println!("  wrote {}{}", path.display(), if *private { " (0600)" } else { "" });
    }
    if written.handed_to_broker_user {
        println!("  gave the broker's key and password file to the mosquitto user (still 0600)");
    } else if !written.broker_secrets.is_empty() {
        println!(
            "If mosquitto runs as another user, let it read: chown mosquitto {}",
            written.broker_secrets.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")
        );
    }
    println!("Start it with: mosquitto -c {}", dir.join("mosquitto.conf").display());
    Ok(ExitCode::SUCCESS)
}
