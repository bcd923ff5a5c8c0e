//! The embedded MQTT broker, as `up` starts it (and `edgeseal broker` alone).

use std::path::PathBuf;

use edgeseal_mqtt::broker::{self, Broker, Settings};

use crate::{Error, Result};

/// Creates the files the security level needs and starts the broker; returns
/// it with the files written (path, private). A taken port is
/// `Error::Mqtt(edgeseal_mqtt::Error::PortTaken)` (see [`port_taken_help`]).
pub async fn start(e: &Settings) -> Result<(Box<dyn Broker>, Vec<(PathBuf, bool)>)> {
    let written = e
        .prepare(&[e.listen.ip()])
        .map_err(|err| Error::Config(format!("cannot prepare the embedded broker (broker.* settings): {err}")))?;
    match broker::start(e).await {
        Ok(b) => Ok((b, written)),
        Err(err @ edgeseal_mqtt::Error::PortTaken(_)) => Err(Error::Mqtt(err)),
        Err(other) => Err(Error::Config(format!("cannot start the embedded broker (broker.* settings): {other}"))),
    }
}

/// What to do when the embedded broker's port is taken.
pub fn port_taken_help(e: &Settings) -> String {
    let mut other = e.listen;
    other.set_port(e.listen.port().wrapping_add(1).max(1024));
    format!(
        "to share through the broker already there, set mqtt.broker (or --broker {}); to run the embedded broker \
         on another port, set broker.listen (EDGESEAL_BROKER__LISTEN={other}); to run none, set broker.listen = \"\"",
        broker::local_url(e.listen, e.level.uses_tls())
    )
}

/// Whether `err` is the embedded broker's port being taken.
pub fn is_port_taken(err: &Error) -> bool {
    matches!(err, Error::Mqtt(edgeseal_mqtt::Error::PortTaken(_)))
}
