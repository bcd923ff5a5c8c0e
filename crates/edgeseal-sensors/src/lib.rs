//! Where readings come from, and how they are cut into batches.
//!
//! A [`Sensor`] is polled at its own interval and returns readings (or an
//! error that the caller counts and logs). Sources: [`simulated`] (the
//! original project's temperature, humidity and air-quality sensors, with a
//! daily cycle and noise, at real device resolution), [`hwmon`] (Linux
//! hwmon/thermal sysfs) and [`jsonl`] (one JSON object per line from stdin or
//! a command, for anything else, blobs as base64). [`batcher::Batcher`] cuts
//! each stream by count and/or age.

#![forbid(unsafe_code)]

pub mod batcher;
pub mod grovepi;
pub mod hwmon;
pub mod jsonl;
pub mod simulated;

use edgeseal_core::Reading;

/// Why a read failed. Counted and logged by the caller, never fatal.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("reading {what} failed: {why}")]
    Io { what: String, why: String },
    #[error("{what} returned an unusable value ({why})")]
    BadValue { what: String, why: String },
    #[error("line {line}: {why}")]
    BadLine { line: u64, why: String },
}

/// A pollable sensor.
pub trait Sensor: Send {
    /// A short description, e.g. `simulated temperature → temperature`.
    fn describe(&self) -> String;
    /// Takes one sample at `now_ms` (ms since the Unix epoch).
    fn read(&mut self, now_ms: i64) -> Result<Vec<Reading>, Error>;
}
