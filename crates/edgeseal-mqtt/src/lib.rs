//! edgeseal's MQTT side: the [`link`] to a broker, the PKI that brokers and agents need
//! ([`pki`]) and configuration for a real mosquitto at each of the original
//! CloudSync security levels ([`mosquitto`]), replacing its openssl walkthrough.

#![forbid(unsafe_code)]

pub mod broker;
pub mod link;
pub mod mosquitto;
pub mod pki;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} is already in use (is another MQTT broker, such as mosquitto, running?)")]
    PortTaken(std::net::SocketAddr),
    #[error("the broker {broker} did not acknowledge the message within {after:?}; it was not confirmed as delivered")]
    NotAcknowledged { broker: String, after: std::time::Duration },
}
