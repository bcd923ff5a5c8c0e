//! What the web UI and the REST API change in a running agent: the batch
//! size and interval, "store now", and pairing (one at a time, shown as a code
//! the user reads off the page or entered from the other agent's page).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use edgeseal_core::keys::Identity;
use edgeseal_core::pairing::PairCode;
use edgeseal_sensors::batcher::Policy;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::share_cmd::{Side, peer_json, run_pairing};
use edgeseal_store::local::LocalState;
use tracing::warn;

/// The settings key under which a batch policy set while running is kept (state.db).
const BATCH_SETTING: &str = "batch";
/// How long a code shown on the page waits for the other agent.
pub const PAIR_WAIT: Duration = Duration::from_secs(300);
/// The most readings a batch may be set to hold from the UI (a batch's readings are sealed in memory at once).
pub const MAX_BATCH: usize = 100_000;

/// What the sealer is asked to do.
pub enum Command {
    /// Cut and seal every open batch now; answers (batches, readings).
    StoreNow(oneshot::Sender<Result<(usize, usize)>>),
    /// The batch policy of streams without their own.
    SetPolicy(Policy),
}

/// Where a pairing started from the UI stands.
#[derive(Clone, Debug, Default)]
pub enum Pairing {
    #[default]
    Idle,
    /// Showing `code` until `until_ms`.
    Waiting {
        code: String,
        until_ms: i64,
    },
    Paired {
        peer: Value,
    },
    Failed {
        error: String,
    },
}

impl Pairing {
    pub fn json(&self) -> Value {
        match self {
            Pairing::Idle => json!({"state": "idle"}),
            Pairing::Waiting { code, until_ms } => {
                json!({"state": "waiting", "code": code, "until": crate::timefmt::format_ms(*until_ms)})
            }
            Pairing::Paired { peer } => json!({"state": "paired", "peer": peer}),
            Pairing::Failed { error } => json!({"state": "failed", "error": error}),
        }
    }
}

pub struct Control {
    cfg: Arc<Config>,
    identity: Arc<Identity>,
    name: String,
    sealer: mpsc::Sender<Command>,
    policy: Mutex<Policy>,
    pairing: Arc<Mutex<Pairing>>,
    /// Ends the code shown now, if any.
    hosting: Mutex<Option<CancellationToken>>,
}

/// A policy's interval as the forms and the API take it: "1m", "500ms", or "off".
pub fn interval_text(p: Policy) -> String {
    match p.interval_ms {
        Some(ms) => humantime::format_duration(Duration::from_millis(ms as u64)).to_string(),
        None => "off".into(),
    }
}

/// A batch policy as the API shows it.
pub fn policy_json(p: Policy) -> Value {
    json!({"count": p.count, "interval": interval_text(p)})
}

/// "every 10 readings", "every 1m", "1000 readings or 1m, whichever comes first".
pub fn describe_policy(p: Policy) -> String {
    match (p.count, p.interval_ms) {
        (0, Some(_)) => format!("every {}", interval_text(p)),
        (c, None) => format!("every {c} readings"),
        (c, Some(_)) => format!("{c} readings or {}, whichever comes first", interval_text(p)),
    }
}

/// How a policy set while running is kept in state.db.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    count: usize,
    interval_ms: Option<i64>,
}

/// The batch policy set from the web UI or API before, if any (a corrupt value is reported and ignored).
pub async fn kept_policy(local: &LocalState) -> Option<Policy> {
    let text = match local.setting(BATCH_SETTING).await {
        Ok(t) => t?,
        Err(e) => {
            warn!("cannot read the settings in state.db: {e}");
            return None;
        }
    };
    match serde_json::from_str::<Kept>(&text) {
        Ok(k) if k.count > 0 || k.interval_ms.is_some() => Some(Policy { count: k.count, interval_ms: k.interval_ms }),
        _ => {
            warn!("ignoring the batch setting kept in state.db, which is not valid: {text:?}");
            None
        }
    }
}

/// Parses a batch policy from the form or API fields: a count (0 = no limit) and an interval ("30s", "off").
pub fn parse_policy(count: &str, interval: &str) -> Result<Policy> {
    let count: usize = count
        .trim()
        .parse()
        .map_err(|_| anyhow!("batch count {count:?} is not a whole number (0 for no count limit)"))?;
    if count > MAX_BATCH {
        bail!("batch count {count} is above the most a batch may hold here, {MAX_BATCH}");
    }
    let interval_ms = match interval.trim() {
        "" | "off" | "none" => None,
        t => {
            let d = humantime::parse_duration(t)
                .map_err(|_| anyhow!("batch interval {t:?} is not a duration (e.g. 30s, 5m) or \"off\""))?;
            if d < Duration::from_millis(10) {
                bail!("batch interval {t:?} is shorter than 10ms");
            }
            Some(d.as_millis() as i64)
        }
    };
    if count == 0 && interval_ms.is_none() {
        bail!("a batch count of 0 with the interval off would never cut a batch; set at least one");
    }
    Ok(Policy { count, interval_ms })
}

impl Control {
    pub fn new(
        cfg: Arc<Config>,
        identity: Arc<Identity>,
        name: String,
        policy: Policy,
        sealer: mpsc::Sender<Command>,
    ) -> Control {
        Control {
            cfg,
            identity,
            name,
            sealer,
            policy: Mutex::new(policy),
            pairing: Arc::default(),
            hosting: Mutex::new(None),
        }
    }

    pub fn policy(&self) -> Policy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `p` to the running sealer and keeps it in state.db for the next start.
    pub async fn set_policy(&self, p: Policy) -> Result<()> {
        let local = crate::commands::open_local(&self.cfg).await?;
        let value = serde_json::to_string(&Kept { count: p.count, interval_ms: p.interval_ms })?;
        let kept = local.put_setting(BATCH_SETTING, &value).await;
        local.close().await;
        kept?;
        self.sealer.send(Command::SetPolicy(p)).await.map_err(|_| anyhow!("the agent is stopping"))?;
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = p;
        Ok(())
    }

    /// Seals every open batch now (they go to the store and to peers next); returns (batches, readings).
    pub async fn store_now(&self) -> Result<(usize, usize)> {
        let (tx, rx) = oneshot::channel();
        self.sealer.send(Command::StoreNow(tx)).await.map_err(|_| anyhow!("the agent is stopping"))?;
        rx.await.map_err(|_| anyhow!("the agent is stopping"))?
    }

    pub fn pairing(&self) -> Pairing {
        self.pairing.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_pairing(slot: &Mutex<Pairing>, p: Pairing) {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }

    fn check_sharing(&self) -> Result<()> {
        if !self.cfg.has_broker() {
            bail!(
                "this agent has no MQTT broker to pair through: set mqtt.broker, or let `up` run the embedded one (broker.listen)"
            );
        }
        Ok(())
    }

    /// Starts showing a pairing code (ending one shown before); returns once the agent listens for it.
    pub async fn host(&self) -> Result<Pairing> {
        self.check_sharing()?;
        let stop = CancellationToken::new();
        if let Some(before) = self.hosting.lock().unwrap_or_else(|p| p.into_inner()).replace(stop.clone()) {
            before.cancel();
        }
        let (listening_tx, listening) = oneshot::channel::<()>();
        let (cfg, identity, name, slot) =
            (self.cfg.clone(), self.identity.clone(), self.name.clone(), self.pairing.clone());
        let task = tokio::spawn(async move {
            let shown = |code: PairCode| {
                let until_ms = crate::timefmt::now_ms() + PAIR_WAIT.as_millis() as i64;
                Self::set_pairing(&slot, Pairing::Waiting { code: code.to_string(), until_ms });
                let _ = listening_tx.send(());
            };
            let no_sas = |_: String, _: &_| Ok(());
            let pairing = run_pairing(&cfg, &identity, &name, Side::Host { sas: false }, PAIR_WAIT, shown, no_sas);
            tokio::select! {
                res = pairing => Self::set_pairing(&slot, outcome(res)),
                _ = stop.cancelled() => {}
            }
        });
        // Dropped unsent when pairing ended before a code was shown: the task then records why
        // just after, so wait for it rather than read the state before it does.
        if listening.await.is_err() {
            let _ = task.await;
        }
        match self.pairing() {
            Pairing::Failed { error } => Err(anyhow!(error)),
            p => Ok(p),
        }
    }

    /// Stops showing a pairing code.
    pub fn cancel(&self) {
        if let Some(stop) = self.hosting.lock().unwrap_or_else(|p| p.into_inner()).take() {
            stop.cancel();
        }
        Self::set_pairing(&self.pairing, Pairing::Idle);
    }

    /// Enters the code another agent shows; waits until paired (or failed).
    pub async fn join(&self, code: &str) -> Result<Value> {
        self.check_sharing()?;
        let code: PairCode = code.trim().parse().map_err(|e| anyhow!("{e}"))?;
        let no_sas = |_: String, _: &_| Ok(());
        let res = run_pairing(&self.cfg, &self.identity, &self.name, Side::Join(code), PAIR_WAIT, |_| {}, no_sas).await;
        let done = outcome(res);
        Self::set_pairing(&self.pairing, done.clone());
        match done {
            Pairing::Paired { peer } => Ok(peer),
            Pairing::Failed { error } => Err(anyhow!(error)),
            Pairing::Idle | Pairing::Waiting { .. } => Err(anyhow!("pairing ended without an outcome")),
        }
    }
}

fn outcome(res: Result<edgeseal_store::local::PeerRow>) -> Pairing {
    match res {
        Ok(peer) => Pairing::Paired { peer: peer_json(&peer, &[]) },
        Err(e) => Pairing::Failed { error: format!("{e:#}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_from_the_form() {
        assert_eq!(parse_policy("100", "30s").unwrap(), Policy { count: 100, interval_ms: Some(30_000) });
        assert_eq!(parse_policy(" 5 ", "off").unwrap(), Policy { count: 5, interval_ms: None });
        assert_eq!(parse_policy("0", "1m").unwrap(), Policy { count: 0, interval_ms: Some(60_000) });
        for (count, interval, says) in [
            ("-1", "off", "not a whole number"),
            ("0", "", "never cut a batch"),
            ("1000000", "off", "above the most"),
            ("10", "soon", "not a duration"),
            ("10", "1ms", "shorter than 10ms"),
        ] {
            let e = parse_policy(count, interval).unwrap_err().to_string();
            assert!(e.contains(says), "{count:?} {interval:?}: {e}");
        }
        assert_eq!(policy_json(Policy { count: 7, interval_ms: None }), json!({"count": 7, "interval": "off"}));
    }
}
