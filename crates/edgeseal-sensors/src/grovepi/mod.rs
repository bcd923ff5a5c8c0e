//! The GrovePi+ board (firmware 1.3) over I²C, written against the
//! embedded-hal 1.0 [`I2c`] trait so the same driver runs on `/dev/i2c-N`
//! (linux-embedded-hal) and on the [`emulator::Board`].
//!
//! Protocol: the board answers at address 0x04. The host writes four bytes
//! `[command, pin, arg, arg]`, then reads the reply, whose first byte repeats
//! the command. Until the board's main loop has run the command, a read
//! returns the byte 23 ("no data yet"); the host polls. Replies:
//!
//! | command | request | reply after the command byte |
//! |---|---|---|
//! | 1 digital read | `[1, pin, 0, 0]` | value (0/1) |
//! | 2 digital write | `[2, pin, value, 0]` | — |
//! | 3 analog read | `[3, pin, 0, 0]` | value, 10 bits, big-endian u16 |
//! | 5 pin mode | `[5, pin, 0 in / 1 out, 0]` | — |
//! | 7 ultrasonic ranger | `[7, pin, 0, 0]` | distance in cm, big-endian u16 |
//! | 8 firmware version | `[8, 0, 0, 0]` | major, minor, patch |
//! | 40 DHT | `[40, pin, model, 0]` | temperature, humidity: little-endian f32 each; NaN when the read failed |
//!
//! The board misbehaves under concurrent access, so every request goes through
//! one owner of the bus ([`bus::Bus`]).

pub mod bus;
pub mod emulator;
pub mod lcd;
pub mod sensor;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use embedded_hal::i2c::I2c;

/// The board's I²C address.
pub const ADDRESS: u8 = 0x04;
/// The byte a read returns while the board has not yet run the last command.
pub const NOT_READY: u8 = 23;

pub const CMD_DIGITAL_READ: u8 = 1;
pub const CMD_DIGITAL_WRITE: u8 = 2;
pub const CMD_ANALOG_READ: u8 = 3;
pub const CMD_PIN_MODE: u8 = 5;
pub const CMD_ULTRASONIC: u8 = 7;
pub const CMD_VERSION: u8 = 8;
pub const CMD_DHT: u8 = 40;

/// Errors talking to the board.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("I²C error on {bus}: {cause}")]
    Io { bus: String, cause: String },
    #[error("the GrovePi did not answer command {cmd} within {ms} ms")]
    Timeout { cmd: u8, ms: u64 },
    #[error(
        "no GrovePi answers at address 0x04 on {bus} ({cause}). Check that the board is seated, that I²C is enabled (raspi-config), and the [grovepi] bus setting"
    )]
    NoBoard { bus: String, cause: String },
    #[error("the GrovePi bus owner has stopped")]
    Closed,
}

/// A digital (`D2`..`D8`) or analog (`A0`..`A2`) port, named as printed on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    Digital(u8),
    Analog(u8),
}

impl Port {
    pub fn pin(self) -> u8 {
        match self {
            Port::Digital(p) | Port::Analog(p) => p,
        }
    }
}

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Port, String> {
        let bad = || format!("port {s:?} does not exist on a GrovePi+: use D2 to D8 or A0 to A2");
        let (kind, n) = s.split_at(s.len().min(1));
        let n: u8 = n.parse().map_err(|_| bad())?;
        match kind {
            "D" | "d" if (2..=8).contains(&n) => Ok(Port::Digital(n)),
            "A" | "a" if n <= 2 => Ok(Port::Analog(n)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Digital(p) => write!(f, "D{p}"),
            Port::Analog(p) => write!(f, "A{p}"),
        }
    }
}

/// DHT sensor models and the codes the firmware takes for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DhtModel {
    /// The blue DHT11 (1 °C, 1 %RH resolution). The original project's "Pro" sensor was configured as this.
    Dht11,
    /// The white DHT22 / AM2302 ("Temperature & Humidity Sensor Pro", 0.1 resolution).
    Dht22,
}

impl DhtModel {
    pub fn code(self) -> u8 {
        match self {
            DhtModel::Dht11 => 0,
            DhtModel::Dht22 => 1,
        }
    }

    pub fn from_code(code: u8) -> Option<DhtModel> {
        match code {
            0 => Some(DhtModel::Dht11),
            1 => Some(DhtModel::Dht22),
            _ => None,
        }
    }

    /// Readings per unit: 1 for the DHT11, 10 for the DHT22.
    pub fn resolution(self) -> f64 {
        match self {
            DhtModel::Dht11 => 1.0,
            DhtModel::Dht22 => 10.0,
        }
    }
}

/// How the driver waits between polls; tests pass a fake clock.
pub trait Pause: Send {
    fn pause(&mut self, d: Duration);
}

/// Waits by sleeping the thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sleep;

impl Pause for Sleep {
    fn pause(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// The GrovePi driver.
#[derive(Debug)]
pub struct GrovePi<I, P> {
    i2c: I,
    pause: P,
    bus_name: String,
    /// Attempts per request on I/O errors, with doubling backoff.
    pub attempts: u32,
}

const POLL: Duration = Duration::from_millis(2);

/// How long the board takes for a command at least (a DHT exchange is about
/// 20 ms of start signal and 40 bits; the ranger waits for its echo).
fn expected_time(cmd: u8) -> Duration {
    match cmd {
        CMD_DHT => Duration::from_millis(22),
        CMD_ULTRASONIC => Duration::from_millis(3),
        _ => Duration::ZERO,
    }
}

impl<I: I2c, P: Pause> GrovePi<I, P> {
    pub fn new(i2c: I, pause: P, bus_name: &str) -> Self {
        GrovePi { i2c, pause, bus_name: bus_name.to_string(), attempts: 4 }
    }

    /// The underlying bus, for other devices on it (the LCD).
    pub fn i2c(&mut self) -> &mut I {
        &mut self.i2c
    }

    pub fn bus_name(&self) -> &str {
        &self.bus_name
    }

    fn io(&self, e: impl fmt::Debug) -> BusError {
        BusError::Io { bus: self.bus_name.clone(), cause: format!("{e:?}") }
    }

    /// One request with retries on I/O errors; returns the reply after the command byte.
    fn request(&mut self, cmd: [u8; 4], reply: usize, budget: Duration) -> Result<[u8; 8], BusError> {
        let mut backoff = Duration::from_millis(5);
        let mut last = None;
        for _ in 0..self.attempts {
            match self.request_once(cmd, reply, budget, expected_time(cmd[0])) {
                Ok(v) => return Ok(v),
                Err(e @ BusError::Io { .. }) => {
                    last = Some(e);
                    self.pause.pause(backoff);
                    backoff *= 2;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(BusError::Closed))
    }

    fn request_once(
        &mut self,
        cmd: [u8; 4],
        reply: usize,
        budget: Duration,
        expected: Duration,
    ) -> Result<[u8; 8], BusError> {
        self.i2c.write(ADDRESS, &cmd).map_err(|e| self.io(e))?;
        let mut out = [0u8; 8];
        if reply == 0 {
            return Ok(out);
        }
        // Give the board the time the command needs before polling it.
        self.pause.pause(expected);
        let mut waited = expected;
        loop {
            let mut buf = [0u8; 9];
            self.i2c.read(ADDRESS, &mut buf[..=reply]).map_err(|e| self.io(e))?;
            if buf[0] == cmd[0] {
                out[..reply].copy_from_slice(&buf[1..=reply]);
                return Ok(out);
            }
            if waited >= budget {
                return Err(BusError::Timeout { cmd: cmd[0], ms: budget.as_millis() as u64 });
            }
            self.pause.pause(POLL);
            waited += POLL;
        }
    }

    pub fn firmware_version(&mut self) -> Result<(u8, u8, u8), BusError> {
        let r = self.request([CMD_VERSION, 0, 0, 0], 3, Duration::from_millis(100))?;
        Ok((r[0], r[1], r[2]))
    }

    pub fn digital_read(&mut self, pin: u8) -> Result<u8, BusError> {
        Ok(self.request([CMD_DIGITAL_READ, pin, 0, 0], 1, Duration::from_millis(100))?[0])
    }

    pub fn digital_write(&mut self, pin: u8, value: bool) -> Result<(), BusError> {
        self.request([CMD_DIGITAL_WRITE, pin, u8::from(value), 0], 0, Duration::ZERO).map(|_| ())
    }

    pub fn pin_mode(&mut self, pin: u8, output: bool) -> Result<(), BusError> {
        self.request([CMD_PIN_MODE, pin, u8::from(output), 0], 0, Duration::ZERO).map(|_| ())
    }

    /// A 10-bit ADC count.
    pub fn analog_read(&mut self, pin: u8) -> Result<u16, BusError> {
        let r = self.request([CMD_ANALOG_READ, pin, 0, 0], 2, Duration::from_millis(100))?;
        Ok(u16::from_be_bytes([r[0], r[1]]))
    }

    /// Distance in cm (the ranger gives up after about 75 ms, i.e. 5 m).
    pub fn ultrasonic_cm(&mut self, pin: u8) -> Result<u16, BusError> {
        let r = self.request([CMD_ULTRASONIC, pin, 0, 0], 2, Duration::from_millis(200))?;
        Ok(u16::from_be_bytes([r[0], r[1]]))
    }

    /// Temperature (°C) and relative humidity (%); NaN when the sensor read failed.
    pub fn dht(&mut self, pin: u8, model: DhtModel) -> Result<(f32, f32), BusError> {
        let r = self.request([CMD_DHT, pin, model.code(), 0], 8, Duration::from_millis(500))?;
        let t = f32::from_le_bytes([r[0], r[1], r[2], r[3]]);
        let h = f32::from_le_bytes([r[4], r[5], r[6], r[7]]);
        Ok((t, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!("D4".parse::<Port>(), Ok(Port::Digital(4)));
        assert_eq!("A0".parse::<Port>(), Ok(Port::Analog(0)));
        for bad in ["D1", "D9", "A3", "X1", "", "D"] {
            assert!(bad.parse::<Port>().is_err(), "{bad}");
        }
        assert_eq!(Port::Digital(7).to_string(), "D7");
    }
}
