//! edgeseal's MQTT side: the [`link`] to a broker, the PKI that brokers and agents need
//! ([`pki`]) and configuration for a real mosquitto at each of the original
//! CloudSync security levels ([`mosquitto`]), replacing its openssl walkthrough.

#![forbid(unsafe_code)]

pub mod broker;
pub mod link;
pub mod mosquitto;
pub mod pki;

/// Errors of the MQTT side; each variant is a different thing for the caller to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    /// A broker URL that is not `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
    #[error("broker URL {0:?}: use mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")]
    BadUrl(String),
    /// A setting that cannot work (version, level, names, TLS without its files); the text names it.
    #[error("{0}")]
    BadSetting(String),
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
    #[error("the broker cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    /// The embedded broker failed to start.
    #[error("the embedded broker did not start: {0}")]
    BrokerStart(String),
    /// The link has stopped: nothing more can be sent or subscribed through it.
    #[error("cannot {what}: {why}")]
    LinkClosed { what: String, why: String },
    /// The broker refused a message (MQTT 5 PUBACK with an error reason: not authorised, quota, …).
    #[error("the broker {broker} refused the message on {topic:?}: {reason}")]
    Refused { broker: String, topic: String, reason: String },
    #[error("no system randomness")]
    NoRandomness,
    #[error("{0} is already in use (is another MQTT broker, such as mosquitto, running?)")]
    PortTaken(std::net::SocketAddr),
    #[error("the broker {broker} did not acknowledge the message within {after:?}; it was not confirmed as delivered")]
    NotAcknowledged { broker: String, after: std::time::Duration },
}
