//! Simulated sensors: the original project's three (temperature, humidity,
//! air quality), with a daily cycle, slow drift and noise, reported at the
//! resolution of the real parts (DHT: 0.1 °C / 0.1 %RH; air quality: a 10-bit
//! ADC count 0..=1023). Deterministic for a given seed.

use std::f64::consts::TAU;

use edgeseal_core::{Reading, StreamName, Value};

use crate::{Error, Sensor};

const DAY_MS: f64 = 86_400_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Temperature,
    Humidity,
    AirQuality,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "temperature" => Some(Kind::Temperature),
            "humidity" => Some(Kind::Humidity),
            "air_quality" | "air-quality" => Some(Kind::AirQuality),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Temperature => "temperature",
            Kind::Humidity => "humidity",
            Kind::AirQuality => "air_quality",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Kind::Temperature => "°C",
            Kind::Humidity => "%RH",
            Kind::AirQuality => "adc",
        }
    }
}

/// splitmix64: small, fast, good enough for noise.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
    }
}

/// The value model of one simulated sensor, separate from polling so the
/// benchmark can generate readings without a clock.
#[derive(Debug, Clone)]
pub struct Model {
    kind: Kind,
    rng: Rng,
    drift: f64,
    spike: f64,
}

impl Model {
    pub fn new(kind: Kind, seed: u64) -> Model {
        Model { kind, rng: Rng::new(seed ^ kind as u64), drift: 0.0, spike: 0.0 }
    }

    /// The value at `now_ms`, quantised to the device's resolution.
    pub fn sample(&mut self, now_ms: i64) -> f64 {
        // Daily phase: warmest and driest mid-afternoon (15:00 UTC).
        let day = ((now_ms as f64 / DAY_MS).fract() - 15.0 / 24.0) * TAU;
        let cycle = day.cos();
        self.drift = 0.995 * self.drift + 0.02 * self.rng.normal();
        let noise = self.rng.normal();
        match self.kind {
            Kind::Temperature => round_to(21.0 + 4.0 * cycle + self.drift + 0.04 * noise, 10.0),
            Kind::Humidity => round_to((55.0 - 12.0 * cycle + 3.0 * self.drift + 0.1 * noise).clamp(0.0, 100.0), 10.0),
            Kind::AirQuality => {
                // Occasional pollution events (cooking, traffic) that decay.
                if self.rng.uniform() < 0.0005 {
                    self.spike += 250.0 + 200.0 * self.rng.uniform();
                }
                self.spike *= 0.995;
                let v = 120.0 + 40.0 * (cycle + 1.0) + 10.0 * self.drift + self.spike + 1.0 * noise;
                v.round().clamp(0.0, 1023.0)
            }
        }
    }
}

fn round_to(v: f64, per_unit: f64) -> f64 {
    (v * per_unit).round() / per_unit
}

/// A simulated sensor producing one stream.
#[derive(Debug, Clone)]
pub struct Simulated {
    stream: StreamName,
    model: Model,
}

impl Simulated {
    pub fn new(kind: Kind, stream: StreamName, seed: u64) -> Simulated {
        Simulated { stream, model: Model::new(kind, seed) }
    }
}

impl Sensor for Simulated {
    fn describe(&self) -> String {
        format!("simulated {} → {}", self.model.kind.name(), self.stream)
    }

    fn read(&mut self, now_ms: i64) -> Result<Vec<Reading>, Error> {
        let value = self.model.sample(now_ms);
        Ok(vec![Reading {
            stream: self.stream.clone(),
            ts: now_ms,
            value: Value::Scalar { value, unit: self.model.kind.unit().into(), label: None },
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_plausible_and_at_device_resolution() {
        for kind in [Kind::Temperature, Kind::Humidity, Kind::AirQuality] {
            let mut m = Model::new(kind, 1);
            let (mut lo, mut hi) = (f64::MAX, f64::MIN);
            for i in 0..86_400 {
                let v = m.sample(1_700_000_000_000 + i * 1000);
                lo = lo.min(v);
                hi = hi.max(v);
                let scaled = if kind == Kind::AirQuality { v } else { v * 10.0 };
                assert!((scaled - scaled.round()).abs() < 1e-6, "{kind:?} {v}");
            }
            let (min, max) = match kind {
                Kind::Temperature => (10.0, 32.0),
                Kind::Humidity => (30.0, 80.0),
                Kind::AirQuality => (50.0, 1023.0),
            };
            assert!(lo >= min && hi <= max && hi - lo > 2.0, "{kind:?} {lo}..{hi}");
        }
    }
}
