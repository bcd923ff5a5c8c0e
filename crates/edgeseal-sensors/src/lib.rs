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

/// The original project's description of a reading, by stream name:
/// temperature > 30 "Hot", < 20 "Cold", else "Normal"; humidity > 70 "High
/// humidity", else "Normal humidity"; air quality > 700 "High pollution",
/// > 300 "Low pollution", else "Air fresh". Other streams have none.
pub fn describe(stream: &str, value: f64) -> Option<&'static str> {
    Some(match stream {
        "temperature" if value > 30.0 => "Hot",
        "temperature" if value < 20.0 => "Cold",
        "temperature" => "Normal",
        "humidity" if value > 70.0 => "High humidity",
        "humidity" => "Normal humidity",
        "air_quality" if value > 700.0 => "High pollution",
        "air_quality" if value > 300.0 => "Low pollution",
        "air_quality" => "Air fresh",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_originals_thresholds() {
        use super::describe;
        assert_eq!(describe("temperature", 30.5), Some("Hot"));
        assert_eq!(describe("temperature", 30.0), Some("Normal"));
        assert_eq!(describe("temperature", 19.9), Some("Cold"));
        assert_eq!(describe("humidity", 70.1), Some("High humidity"));
        assert_eq!(describe("air_quality", 701.0), Some("High pollution"));
        assert_eq!(describe("air_quality", 300.0), Some("Air fresh"));
        assert_eq!(describe("cpu", 50.0), None);
    }
}
