//! The agent's errors: variants a caller can act on. The web crate maps them
//! to status codes, the binary to exit codes, each in one place and by
//! variant, never by the message's text.

use std::path::PathBuf;

/// What went wrong, as the CLI, the REST API and the UI need to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory holds no agent (or is unusable): the message says how to make one.
    #[error("{0}")]
    NotInitialised(String),
    /// The configuration is not usable; the message names the key.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Something the caller gave is malformed; the message names the field.
    #[error("{0}")]
    BadInput(String),
    /// No such stream; the message lists the streams there are.
    #[error("{0}")]
    NoSuchStream(String),
    /// No peer matches; `known` lists the peers there are.
    #[error("{0}")]
    NoSuchPeer(String),
    #[error("{peer} holds no grant{what}")]
    NoSuchGrant { peer: String, what: String },
    /// No MQTT broker is configured for what needs one.
    #[error("{0}")]
    NoBroker(String),
    /// "cannot reach the MQTT broker …": the message names the broker and how long it waited.
    #[error("{0}")]
    BrokerUnreachable(String),
    /// The broker answered but refused (the protocol version, the credentials, a topic).
    #[error("{0}")]
    BrokerRefused(String),
    #[error("{0}")]
    BrokerTimedOut(String),
    #[error(transparent)]
    Mqtt(edgeseal_mqtt::Error),
    /// The store is down or unreachable; retrying later may succeed.
    #[error("{0}")]
    StoreUnreachable(edgeseal_store::Error),
    #[error(transparent)]
    Store(edgeseal_store::Error),
    /// The agent's own state (state.db) failed.
    #[error("the local state (state.db): {0}")]
    Local(edgeseal_store::Error),
    #[error("pairing failed: {0}")]
    PairingFailed(String),
    /// Verification found problems (exit code 3).
    #[error("{0}")]
    Integrity(String),
    /// Another process holds the data directory.
    #[error("{0}")]
    Busy(String),
    /// The keystore cannot be opened (wrong passphrase, damaged, protected without a passphrase).
    #[error("{0}")]
    Keystore(String),
    /// The running agent is shutting down (or not running: no sealer to ask).
    #[error("{0}")]
    Stopping(String),
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Core(#[from] edgeseal_core::Error),
    /// A fault that is not the caller's: the message says what.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<edgeseal_mqtt::Error> for Error {
    fn from(e: edgeseal_mqtt::Error) -> Error {
        use edgeseal_mqtt::Error as M;
        match e {
            M::Refused { .. } => Error::BrokerRefused(e.to_string()),
            M::NotAcknowledged { .. } => Error::BrokerTimedOut(e.to_string()),
            M::BadUrl(_) | M::BadSetting(_) => Error::Config(e.to_string()),
            other => Error::Mqtt(other),
        }
    }
}

impl Error {
    /// The store's error, telling an unreachable store apart from the others.
    pub fn store(e: edgeseal_store::Error) -> Error {
        if matches!(e, edgeseal_store::Error::Unreachable { .. }) || e.is_transient() {
            Error::StoreUnreachable(e)
        } else {
            Error::Store(e)
        }
    }

    pub fn bad(what: impl Into<String>) -> Error {
        Error::BadInput(what.into())
    }

    /// A short name of the variant, for logs and the control socket.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotInitialised(_) => "not_initialised",
            Error::Config(_) => "config",
            Error::BadInput(_) => "bad_input",
            Error::NoSuchStream(_) => "no_such_stream",
            Error::NoSuchPeer(_) => "no_such_peer",
            Error::NoSuchGrant { .. } => "no_such_grant",
            Error::NoBroker(_) => "no_broker",
            Error::BrokerUnreachable(_) => "broker_unreachable",
            Error::BrokerRefused(_) => "broker_refused",
            Error::BrokerTimedOut(_) => "broker_timed_out",
            Error::Mqtt(_) => "mqtt",
            Error::StoreUnreachable(_) => "store_unreachable",
            Error::Store(_) => "store",
            Error::Local(_) => "local",
            Error::PairingFailed(_) => "pairing_failed",
            Error::Integrity(_) => "integrity",
            Error::Busy(_) => "busy",
            Error::Keystore(_) => "keystore",
            Error::Stopping(_) => "stopping",
            Error::Io { .. } => "io",
            Error::Core(_) => "core",
            Error::Internal(_) => "internal",
        }
    }

    /// Rebuilds an error that crossed the control socket as (kind, message):
    /// the variant survives, so status and exit codes stay right.
    pub fn from_wire(kind: &str, message: String) -> Error {
        match kind {
            "not_initialised" => Error::NotInitialised(message),
            "config" => Error::Config(message.strip_prefix("invalid configuration: ").unwrap_or(&message).to_string()),
            "bad_input" => Error::BadInput(message),
            "no_such_stream" => Error::NoSuchStream(message),
            "no_such_peer" => Error::NoSuchPeer(message),
            "no_such_grant" => Error::NoSuchGrant { peer: message, what: String::new() },
            "no_broker" => Error::NoBroker(message),
            "broker_unreachable" => Error::BrokerUnreachable(message),
            "broker_refused" | "mqtt" => Error::BrokerRefused(message),
            "broker_timed_out" => Error::BrokerTimedOut(message),
            "pairing_failed" => {
                Error::PairingFailed(message.strip_prefix("pairing failed: ").unwrap_or(&message).to_string())
            }
            "integrity" => Error::Integrity(message),
            "busy" => Error::Busy(message),
            "keystore" => Error::Keystore(message),
            "stopping" => Error::Stopping(message),
            _ => Error::Internal(message),
        }
    }
}

/// Errors of state.db.
pub(crate) trait LocalContext<T> {
    fn local(self) -> Result<T>;
}

impl<T> LocalContext<T> for edgeseal_store::Result<T> {
    fn local(self) -> Result<T> {
        self.map_err(Error::Local)
    }
}
