//! The running agent's control socket, `<data dir>/agent.sock`: a Unix socket
//! (mode 0600, in the 0700 data directory, so only the agent's user reaches
//! it) over which the commands that change state — `share`, `revoke`,
//! `keys rotate`, `pair` — go through the agent that holds the data
//! directory instead of writing beside it.
//!
//! One JSON request per connection, one line; the answer is JSON lines:
//! progress (a pairing code to show) and then either `{"ok": …}` or
//! `{"error": {"kind", "message"}}`, which the client turns back into the
//! same [`Error`] variant.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::datadir::socket_path;
use crate::service::{Service, parse_stream};
use crate::views::PairingView;
use crate::{Error, Result};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 << 10;

/// What the CLI asks the running agent to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Grant {
        peer: String,
        stream: String,
        from_ms: Option<i64>,
        #[serde(default)]
        to_ms: Option<i64>,
        /// Share a stream before its first reading.
        #[serde(default)]
        new: bool,
    },
    Revoke {
        peer: String,
        streams: Vec<String>,
    },
    Rotate {
        stream: String,
    },
    /// Show a code and wait (up to `wait_ms`) for the other agent to enter it.
    PairHost {
        wait_ms: u64,
    },
    PairJoin {
        code: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Progress(PairingView),
    Ok(serde_json::Value),
    Error { kind: String, message: String },
}

/// Serves the control socket for `service` until shutdown.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    service: Arc<Service>,
    path: std::path::PathBuf,
}

impl ControlServer {
    /// Binds `<data dir>/agent.sock`. The caller holds the data directory's
    /// lock, so a socket file left there is a dead agent's and is replaced.
    pub fn bind(data_dir: &Path, service: Arc<Service>) -> Result<ControlServer> {
        let path = socket_path(data_dir);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| Error::Io {
            what: "cannot listen on",
            path: path.clone(),
            source,
        })?;
        crate::datadir::make_private(&path);
        Ok(ControlServer { listener, service, path })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                conn = self.listener.accept() => match conn {
                    Ok((stream, _)) => {
                        let (service, stop) = (self.service.clone(), shutdown.clone());
                        tasks.spawn(async move {
                            if let Err(e) = serve(stream, &service, stop).await {
                                debug!("control connection: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        warn!("the control socket failed: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

fn answer<T: Serialize>(r: Result<T>) -> Reply {
    match r.and_then(|v| serde_json::to_value(v).map_err(|e| Error::Internal(e.to_string()))) {
        Ok(v) => Reply::Ok(v),
        Err(e) => Reply::Error { kind: e.kind().into(), message: e.to_string() },
    }
}

async fn serve(stream: UnixStream, service: &Service, shutdown: CancellationToken) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    (&mut r).take(MAX_REQUEST as u64).read_line(&mut line).await?;
    let request: Request = match serde_json::from_str(&line) {
        Ok(q) => q,
        Err(e) => {
            let e = Error::bad(format!("a control request that is not understood: {e}"));
            return send(&mut w, &answer::<()>(Err(e))).await;
        }
    };
    let reply = match request {
        Request::Grant { peer, stream, from_ms, to_ms, new } => match parse_stream(&stream) {
            Ok(s) => answer(service.grant(&peer, &s, (from_ms, to_ms), new).await),
            Err(e) => answer::<()>(Err(e)),
        },
        Request::Revoke { peer, streams } => {
            match streams.iter().map(|s| parse_stream(s)).collect::<Result<Vec<_>>>() {
                Ok(s) => answer(service.revoke(&peer, &s).await),
                Err(e) => answer::<()>(Err(e)),
            }
        }
        Request::Rotate { stream } => match parse_stream(&stream) {
            Ok(s) => answer(service.rotate(&s).await),
            Err(e) => answer::<()>(Err(e)),
        },
        Request::PairJoin { code } => answer(service.join(&code).await),
        Request::PairHost { wait_ms } => {
            let mut changes = service.pairing_changes();
            match service.host(Duration::from_millis(wait_ms)).await {
                Err(e) => answer::<()>(Err(e)),
                Ok(shown) => {
                    send(&mut w, &Reply::Progress(shown)).await?;
                    changes.mark_unchanged();
                    // Until paired, failed or ended; a client that goes away ends the pairing.
                    let mut rest = String::new();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => {
                                service.cancel_pairing();
                                break answer::<()>(Err(Error::Stopping("the agent is stopping".into())));
                            }
                            n = r.read_line(&mut rest) => if n.unwrap_or(0) == 0 {
                                service.cancel_pairing();
                                return Ok(());
                            },
                            c = changes.changed() => {
                                if c.is_err() {
                                    break answer::<()>(Err(Error::Stopping("the agent is stopping".into())));
                                }
                                match service.pairing() {
                                    PairingView::Paired { peer } => break answer(Ok(peer)),
                                    PairingView::Failed { error } => break answer::<()>(Err(service.hosting_failure(error))),
                                    PairingView::Idle => break answer::<()>(Err(Error::PairingFailed(
                                        "the code was withdrawn (cancelled, or another code shown) on the running agent".into(),
                                    ))),
                                    PairingView::Waiting { .. } => {}
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    send(&mut w, &reply).await?;
    w.shutdown().await
}

/// Sends `request` to the agent running on `data_dir` and returns its answer;
/// `progress` sees what it says on the way (the pairing code to show).
pub async fn request<T: DeserializeOwned>(
    data_dir: &Path,
    request: &Request,
    mut progress: impl FnMut(&PairingView),
) -> Result<T> {
    let path = socket_path(data_dir);
    let unreachable = |e: std::io::Error| {
        Error::Stopping(format!("the running agent does not answer on its control socket {}: {e}", path.display()))
    };
    let stream = UnixStream::connect(&path).await.map_err(unreachable)?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| Error::Internal(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line).await.map_err(unreachable)?;
    let mut lines = BufReader::new(r).lines();
    loop {
        let Some(text) = lines.next_line().await.map_err(unreachable)? else {
            return Err(Error::Stopping("the running agent closed the control connection without an answer".into()));
        };
        match serde_json::from_str::<Reply>(&text) {
            Ok(Reply::Progress(p)) => progress(&p),
            Ok(Reply::Ok(v)) => {
                return serde_json::from_value(v)
                    .map_err(|e| Error::Internal(format!("the running agent's answer is not understood: {e}")));
            }
            Ok(Reply::Error { kind, message }) => return Err(Error::from_wire(&kind, message)),
            Err(e) => return Err(Error::Internal(format!("the running agent's answer is not understood: {e}"))),
        }
    }
}
