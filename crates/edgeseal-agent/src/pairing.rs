//! Pairing two agents through the broker (SPAKE2 with a one-time code, the
//! core's typestate [`edgeseal_core::pairing`] driven over MQTT), and the
//! connection helpers the short commands share.

use std::time::Duration;

use edgeseal_core::keys::Identity;
use edgeseal_core::pairing::{self, Host, Joiner, PairCode, Peer};
use edgeseal_mqtt::link::{Link, LinkOptions, Message};
use edgeseal_store::local::{LocalState, PeerRow};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::LocalContext;
use crate::share::{Topics, rng};
use crate::{Error, Result, now_ms};

/// How long a command waits for the broker to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long each step after the first message may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A client id for a short-lived connection of `kind` (pair, grant, watch, …).
pub fn client_id(kind: &str) -> String {
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    format!("edgeseal-{kind}-{}", hex::encode(r))
}

/// Starts a link and waits (up to [`CONNECT_TIMEOUT`]) until the broker answers.
pub async fn connected(opts: LinkOptions, stop: &CancellationToken) -> Result<(Link, mpsc::Receiver<Message>)> {
    let url = opts.url.clone();
    let (link, rx) = Link::start(opts, stop.clone())?;
    let mut up = link.connected();
    tokio::time::timeout(CONNECT_TIMEOUT, up.wait_for(|c| *c))
        .await
        .map_err(|_| {
            let why = link.last_error().map_or(String::new(), |e| format!(": {e}"));
            Error::BrokerUnreachable(format!(
                "cannot reach the MQTT broker {url} (waited {}s){why}",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|_| Error::BrokerUnreachable(format!("the connection to {url} ended")))?;
    Ok((link, rx))
}

/// The next non-empty message on `topic`, or a clear error after `timeout`.
async fn next_on(
    rx: &mut mpsc::Receiver<Message>,
    topic: &str,
    timeout: Duration,
    waiting_for: &str,
) -> Result<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => {
                return Err(Error::PairingFailed(format!(
                    "timed out after {} waiting for {waiting_for}",
                    humantime::format_duration(timeout)
                )));
            }
            Ok(None) => return Err(Error::PairingFailed("the broker connection closed".into())),
            Ok(Some(m)) if m.topic == topic && pairing::is_abort(&m.payload) => {
                return Err(Error::PairingFailed(
                    "the other agent gave up (a different code, or the messages were altered)".into(),
                ));
            }
            Ok(Some(m)) if m.topic == topic && !m.payload.is_empty() => return Ok(m.payload),
            Ok(Some(_)) => {}
        }
    }
}

/// Which side of a pairing this agent takes.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// Shows a code (a random one, or with `sas` a short channel number and a comparison code).
    Host { sas: bool },
    /// Enters the code the other agent shows.
    Join(PairCode),
}

fn core(e: edgeseal_core::Error) -> Error {
    match e {
        edgeseal_core::Error::PairingFailed(why) => Error::PairingFailed(why.into()),
        other => Error::PairingFailed(other.to_string()),
    }
}

/// Pairs over the broker `cfg` names and records the peer in `local`. `shown`
/// is told the code to show (hosting); `confirm` is asked about the comparison
/// code when it is short (`--sas`). A failure tells the other side, so it stops waiting.
#[allow(clippy::too_many_arguments)] // the two sides' callbacks are what callers differ in
pub async fn run_pairing(
    cfg: &Config,
    local: &LocalState,
    identity: &Identity,
    name: &str,
    side: Side,
    timeout: Duration,
    shown: impl FnOnce(PairCode),
    confirm: impl FnOnce(String, &Peer) -> Result<()>,
) -> Result<PeerRow> {
    let opts = cfg.link_options(&client_id("pair"))?;
    let topics = Topics::new(&cfg.mqtt.prefix);
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let (link, mut rx) = connected(opts, &stop).await?;
    let mut abort_on: Option<String> = None;
    let result: Result<pairing::Paired> = async {
        let paired = match side {
            Side::Host { sas } => {
                let code = if sas {
                    let mut b = [0u8; 2];
                    getrandom::fill(&mut b).map_err(|e| Error::Internal(format!("no system randomness: {e}")))?;
                    PairCode::sas(1 + u16::from_le_bytes(b) % 999)
                } else {
                    PairCode::random(&mut rng())
                };
                let (mine, theirs) = (topics.pair(code.channel, "host"), topics.pair(code.channel, "joiner"));
                abort_on = Some(mine.clone());
                link.subscribe(&theirs).await?;
                // Once this is acknowledged the broker has handled the subscription before it.
                link.publish(&mine, Vec::new(), false).await?;
                let host = Host::new(code, &mut rng());
                shown(code);
                let m1 = next_on(&mut rx, &theirs, timeout, "the other agent to enter the code").await?;
                let (host, m2) = host.answer(&m1, identity, name).map_err(core)?;
                link.publish(&mine, m2, false).await?;
                let m3 = next_on(&mut rx, &theirs, STEP_TIMEOUT, "the other agent's identity").await?;
                let (paired, m4) = host.finish(&m3).map_err(core)?;
                if code.is_sas() {
                    confirm(paired.comparison_code(), &paired.peer)?;
                }
                link.publish(&mine, m4, false).await?;
                paired
            }
            Side::Join(code) => {
                let (mine, theirs) = (topics.pair(code.channel, "joiner"), topics.pair(code.channel, "host"));
                abort_on = Some(mine.clone());
                link.subscribe(&theirs).await?;
                let (joiner, m1) = Joiner::new(code, &mut rng());
                link.publish(&mine, m1, false).await?;
                let m2 = next_on(&mut rx, &theirs, STEP_TIMEOUT, "the agent that showed the code").await?;
                let (joiner, m3) = joiner.confirm(&m2, identity, name).map_err(core)?;
                if code.is_sas() {
                    confirm(joiner.comparison_code(), joiner.peer())?;
                }
                link.publish(&mine, m3, false).await?;
                let m4 = next_on(&mut rx, &theirs, STEP_TIMEOUT, "the other agent to accept").await?;
                joiner.finish(&m4).map_err(core)?
            }
        };
        Ok(paired)
    }
    .await;
    let paired = match result {
        Ok(p) => p,
        Err(e) => {
            if let Some(topic) = abort_on {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), link.publish(&topic, pairing::abort_message(), false))
                        .await;
            }
            return Err(e);
        }
    };
    let peer = PeerRow {
        device: paired.peer.public.device_id(),
        name: paired.peer.name.clone(),
        public: paired.peer.public,
        paired_ms: now_ms(),
    };
    local.add_peer(&peer).await.local()?;
    Ok(peer)
}
