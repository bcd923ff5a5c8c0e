//! Grove sensors on the GrovePi: DHT11/DHT22 temperature and humidity, air
//! quality, light, sound, rotary angle (analog), button (digital) and the
//! ultrasonic ranger. Readings carry units at the part's resolution; failed or
//! impossible values (the DHT's NaN) are errors the agent counts and logs.

use edgeseal_core::{Reading, StreamName, Value};

use super::bus::{Answer, Bus, Op};
use super::{DhtModel, Port};
use crate::{Error, Sensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroveKind {
    Dht(DhtModel),
    AirQuality,
    Light,
    Sound,
    Rotary,
    Button,
    Ultrasonic,
}

impl GroveKind {
    /// Parses a `model` from the config.
    pub fn parse(s: &str) -> Option<GroveKind> {
        Some(match s {
            "dht11" => GroveKind::Dht(DhtModel::Dht11),
            "dht22" | "am2302" => GroveKind::Dht(DhtModel::Dht22),
            "air_quality" => GroveKind::AirQuality,
            "light" => GroveKind::Light,
            "sound" => GroveKind::Sound,
            "rotary_angle" | "rotary" => GroveKind::Rotary,
            "button" => GroveKind::Button,
            "ultrasonic" => GroveKind::Ultrasonic,
            _ => return None,
        })
    }

    pub const MODELS: &'static str = "dht11, dht22, air_quality, light, sound, rotary_angle, button, ultrasonic";

    pub fn name(self) -> &'static str {
        match self {
            GroveKind::Dht(DhtModel::Dht11) => "dht11",
            GroveKind::Dht(DhtModel::Dht22) => "dht22",
            GroveKind::AirQuality => "air_quality",
            GroveKind::Light => "light",
            GroveKind::Sound => "sound",
            GroveKind::Rotary => "rotary_angle",
            GroveKind::Button => "button",
            GroveKind::Ultrasonic => "ultrasonic",
        }
    }

    fn analog(self) -> bool {
        matches!(self, GroveKind::AirQuality | GroveKind::Light | GroveKind::Sound | GroveKind::Rotary)
    }

    /// The streams it produces, from the configured `stream` (if any).
    fn streams(self, stream: Option<&str>) -> Vec<String> {
        match (self, stream) {
            (GroveKind::Dht(_), None) => vec!["temperature".into(), "humidity".into()],
            (GroveKind::Dht(_), Some(s)) => vec![format!("{s}.temperature"), format!("{s}.humidity")],
            (k, None) => vec![match k {
                GroveKind::Ultrasonic => "distance".into(),
                other => other.name().into(),
            }],
            (_, Some(s)) => vec![s.into()],
        }
    }
}

/// One Grove sensor on a port.
#[derive(Debug, Clone)]
pub struct GroveSensor {
    bus: Bus,
    kind: GroveKind,
    port: Port,
    streams: Vec<StreamName>,
}

impl GroveSensor {
    /// Checks the port fits the sensor and the stream names are valid.
    pub fn new(bus: Bus, kind: GroveKind, port: Port, stream: Option<&str>) -> Result<GroveSensor, String> {
        Self::check(kind, port, stream).map(|streams| GroveSensor { bus, kind, port, streams })
    }

    /// The validation of [`GroveSensor::new`] without a bus (for the config).
    pub fn check(kind: GroveKind, port: Port, stream: Option<&str>) -> Result<Vec<StreamName>, String> {
        match (kind.analog(), port) {
            (true, Port::Digital(_)) => {
                return Err(format!("{} is an analog sensor: use port A0, A1 or A2", kind.name()));
            }
            (false, Port::Analog(_)) => {
                return Err(format!("{} is a digital sensor: use a port D2 to D8", kind.name()));
            }
            _ => {}
        }
        kind.streams(stream).into_iter().map(|s| StreamName::new(s).map_err(|e| e.to_string())).collect()
    }

    fn what(&self) -> String {
        format!("{} on {}", self.kind.name(), self.port)
    }

    fn bad(&self, why: impl Into<String>) -> Error {
        Error::BadValue { what: self.what(), why: why.into() }
    }

    fn scalar(&self, i: usize, now_ms: i64, value: f64, unit: &str) -> Reading {
        Reading {
            stream: self.streams[i].clone(),
            ts: now_ms,
            value: Value::Scalar { value, unit: unit.into(), label: None },
        }
    }
}

impl Sensor for GroveSensor {
    fn describe(&self) -> String {
        let streams: Vec<&str> = self.streams.iter().map(StreamName::as_str).collect();
        format!("grovepi {} → {}", self.what(), streams.join(", "))
    }

    fn read(&mut self, now_ms: i64) -> Result<Vec<Reading>, Error> {
        let pin = self.port.pin();
        let op = match self.kind {
            GroveKind::Dht(m) => Op::Dht(pin, m),
            GroveKind::Button => Op::DigitalRead(pin),
            GroveKind::Ultrasonic => Op::Ultrasonic(pin),
            _ => Op::AnalogRead(pin),
        };
        let answer = self.bus.call(op).map_err(|e| Error::Io { what: self.what(), why: e.to_string() })?;
        match (self.kind, answer) {
            (GroveKind::Dht(model), Answer::Dht(t, h)) => {
                if t.is_nan() || h.is_nan() {
                    return Err(self.bad("the DHT read failed (NaN)"));
                }
                if !(-40.0..=80.0).contains(&t) || !(0.0..=100.0).contains(&h) {
                    return Err(self.bad(format!("{t} °C / {h} %RH is out of the sensor's range")));
                }
                let r = model.resolution();
                let round = |v: f32| (f64::from(v) * r).round() / r;
                Ok(vec![self.scalar(0, now_ms, round(t), "°C"), self.scalar(1, now_ms, round(h), "%RH")])
            }
            (GroveKind::Button, Answer::Value(v)) if v <= 1 => Ok(vec![self.scalar(0, now_ms, f64::from(v), "state")]),
            (GroveKind::Ultrasonic, Answer::Value(cm)) => {
                if cm == 0 || cm > 500 {
                    return Err(self.bad(format!("{cm} cm: no echo within range")));
                }
                Ok(vec![self.scalar(0, now_ms, f64::from(cm), "cm")])
            }
            (GroveKind::Rotary, Answer::Value(v)) if v <= 1023 => {
                // The Grove rotary angle sensor turns through 300°.
                let deg = (f64::from(v) * 300.0 / 1023.0 * 10.0).round() / 10.0;
                Ok(vec![self.scalar(0, now_ms, deg, "°")])
            }
            (GroveKind::AirQuality | GroveKind::Light | GroveKind::Sound, Answer::Value(v)) if v <= 1023 => {
                Ok(vec![self.scalar(0, now_ms, f64::from(v), "adc")])
            }
            (_, other) => Err(self.bad(format!("unexpected answer {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_kit_reads_through_the_emulator() {
        let bus = Bus::open("emulated").unwrap();
        let mut ok = 0;
        let mut failed = 0;
        for model in ["dht11", "dht22", "air_quality", "light", "sound", "rotary_angle", "button", "ultrasonic"] {
            let kind = GroveKind::parse(model).unwrap();
            let port: Port = if kind.analog() { "A0" } else { "D4" }.parse().unwrap();
            let mut s = GroveSensor::new(bus.clone(), kind, port, None).unwrap();
            for _ in 0..30 {
                match s.read(1) {
                    Ok(rs) => {
                        ok += 1;
                        assert!(rs.iter().all(|r| matches!(r.value, Value::Scalar { value, .. } if value.is_finite())));
                    }
                    Err(Error::BadValue { why, .. }) => {
                        assert!(why.contains("NaN"), "{why}");
                        failed += 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert!(ok > 200 && failed > 0, "{ok} ok, {failed} failed");
    }

    #[test]
    fn ports_must_fit() {
        let e = GroveSensor::check(GroveKind::AirQuality, Port::Digital(4), None).unwrap_err();
        assert!(e.contains("use port A0"), "{e}");
        let e = GroveSensor::check(GroveKind::Dht(DhtModel::Dht22), Port::Analog(0), None).unwrap_err();
        assert!(e.contains("D2 to D8"), "{e}");
        let s = GroveSensor::check(GroveKind::Dht(DhtModel::Dht22), Port::Digital(4), Some("room")).unwrap();
        assert_eq!(s[1].as_str(), "room.humidity");
    }
}
