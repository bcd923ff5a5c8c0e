//! The edgeseal agent as a library, under the thin `edgeseal` binary.
//!
//! - [`config`]: the validated configuration (the binary builds it from its layers).
//! - [`datadir`]: the data directory: keystore, API token, and the lock that makes one process its writer.
//! - [`service`]: the operations the CLI, the REST API and the UI share, opened once per process,
//!   answering typed [`views`] or an [`Error`] a caller can act on.
//! - [`runtime`]: the running agent's components (sources, sealer, drainer, publisher, receiver,
//!   LCD, embedded broker), each `run(self, shutdown)`.
//! - [`control`]: the running agent's socket, through which the CLI changes a running agent.
//! - [`share`] (topics, grants, the inbox) and [`pairing`]: sharing with peers through a broker.
//!
//! Dependencies point one way: core ← {sensors, store, mqtt} ← agent ← web ← bin.

#![forbid(unsafe_code)]

pub mod batching;
pub mod config;
pub mod control;
pub mod datadir;
mod error;
pub mod ingest;
pub mod live;
pub mod pairing;
pub mod quiet;
pub mod runtime;
pub mod service;
pub mod share;
pub mod times;
pub mod views;

pub use error::{Error, Result};

/// The wall clock, in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
