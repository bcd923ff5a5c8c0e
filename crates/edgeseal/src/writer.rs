//! One writer per data directory. A command that changes the agent's state
//! either takes the data directory's lock itself, or — when `up` holds it —
//! goes through the running agent's control socket; any other holder is
//! named, with what to do instead. Read-only commands take no lock.

use std::time::Duration;

use edgeseal_agent::Error;
use edgeseal_agent::config::Config;
use edgeseal_agent::datadir::{DirLock, Holder};

/// How long a short command waits while another short command holds the data directory.
const PATIENCE: Duration = Duration::from_secs(5);

/// Who carries a state-changing command out.
#[derive(Debug)]
pub enum Writer {
    /// This process, holding the lock until the value drops.
    Here(DirLock),
    /// The agent running on the data directory (`up`), through its control socket.
    Agent(Holder),
}

/// Takes the data directory for `command`, or finds the running agent to do it.
pub fn writer(cfg: &Config, command: &str) -> Result<Writer, Error> {
    match DirLock::acquire(&cfg.data_dir, command, PATIENCE)? {
        Ok(lock) => Ok(Writer::Here(lock)),
        Err(holder) if holder.command == "up" => Ok(Writer::Agent(holder)),
        Err(holder) => Err(busy(cfg, &holder, command)),
    }
}

/// Takes the data directory for a long-running command (`up`, `watch`), which cannot go through another.
pub fn exclusive(cfg: &Config, command: &str) -> Result<DirLock, Error> {
    match DirLock::acquire(&cfg.data_dir, command, PATIENCE)? {
        Ok(lock) => Ok(lock),
        Err(holder) => Err(busy(cfg, &holder, command)),
    }
}

/// Who holds the data directory, and what to do instead of `command`.
fn busy(cfg: &Config, holder: &Holder, command: &str) -> Error {
    let dir = cfg.data_dir.display();
    let advice = match (holder.command.as_str(), command) {
        ("up", "watch") => {
            "it already receives, verifies and stores what peers share: its dashboard and /api/v1/live \
             show the readings as they arrive, and `edgeseal fetch --device PEER` reads what it stored; \
             stop it first to run `watch` instead"
        }
        ("up", _) => {
            "it already samples, stores, shares and receives for this agent: use its web UI or API, or \
             `edgeseal share`, `revoke`, `keys rotate` and `pair`, which go through it; stop it first to \
             run this command alone, or give another agent its own --data-dir"
        }
        ("watch", _) => {
            "stop it (Ctrl-C) first, or run `edgeseal up` instead, which receives what peers share and \
             takes `share`, `revoke`, `keys rotate` and `pair` while it runs"
        }
        _ => "wait until it has finished, then try again",
    };
    Error::Busy(format!("{holder} is using the data directory {dir}; {advice}"))
}
