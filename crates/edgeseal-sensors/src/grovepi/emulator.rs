//! An emulated GrovePi+ (firmware 1.3) and Grove LCD RGB backlight on one
//! I²C bus: the board's side of the protocol, byte for byte, so the driver,
//! the sensors and the agent run end to end without hardware.
//!
//! Faithful to the firmware where the host can tell: a command is exactly
//! four bytes to 0x04; until the board's loop has run it (a delay per
//! command: about 25 ms for a DHT read, the echo time for the ranger) every
//! read returns 23; the reply then stays readable until the next command;
//! commands without a reply read back as 0xFF (the bus's pull-ups); a DHT read
//! fails now and then and returns NaN for both values, as the real sensor
//! does; other addresses do not acknowledge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

use super::{
    ADDRESS, CMD_ANALOG_READ, CMD_DHT, CMD_DIGITAL_READ, CMD_ULTRASONIC, CMD_VERSION, DhtModel, NOT_READY, Pause,
};
use crate::simulated::{Kind, Model, Rng};

/// The LCD's text controller and RGB backlight addresses (Grove LCD RGB Backlight v4).
pub const LCD_TEXT: u8 = 0x3e;
pub const LCD_RGB: u8 = 0x62;

/// Microseconds on some clock.
pub trait Clock: Send + Sync {
    fn now_us(&self) -> u64;
}

/// Real time.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// A clock that moves only when told: pair it with [`ManualPause`] in tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A [`Pause`] that advances a [`ManualClock`] instead of sleeping.
#[derive(Debug, Clone)]
pub struct ManualPause(pub Arc<ManualClock>);

impl Pause for ManualPause {
    fn pause(&mut self, d: Duration) {
        self.0.0.fetch_add(d.as_micros() as u64, Ordering::SeqCst);
    }
}

/// What the emulated LCD shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LcdState {
    pub lines: [String; 2],
    pub rgb: (u8, u8, u8),
    cursor: (usize, usize),
    rgb_regs: [u8; 9],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmuError(ErrorKind);

impl embedded_hal::i2c::Error for EmuError {
    fn kind(&self) -> ErrorKind {
        self.0
    }
}

/// The emulated board.
pub struct Board {
    clock: Arc<dyn Clock>,
    command: Option<[u8; 4]>,
    ready_at: u64,
    reply: Option<Vec<u8>>,
    rng: Rng,
    models: [Model; 3],
    dht: Model,
    hum: Model,
    /// Every n-th DHT read fails (NaN); 0 never.
    pub dht_failure_every: u32,
    dht_reads: u32,
    button_reads: u32,
    /// Fail every n-th I²C transaction with a bus error (tests of retries); 0 never.
    pub bus_error_every: u32,
    transactions: u32,
    lcd: Arc<Mutex<LcdState>>,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").field("command", &self.command).finish_non_exhaustive()
    }
}

impl Board {
    pub fn new(clock: Arc<dyn Clock>, seed: u64) -> Board {
        Board {
            clock,
            command: None,
            ready_at: 0,
            reply: None,
            rng: Rng::new(seed),
            models: [
                Model::new(Kind::AirQuality, seed),
                Model::new(Kind::AirQuality, seed ^ 0x11),
                Model::new(Kind::AirQuality, seed ^ 0x22),
            ],
            dht: Model::new(Kind::Temperature, seed),
            hum: Model::new(Kind::Humidity, seed),
            dht_failure_every: 25,
            dht_reads: 0,
            button_reads: 0,
            bus_error_every: 0,
            transactions: 0,
            lcd: Arc::new(Mutex::new(LcdState::default())),
        }
    }

    /// A handle on what the LCD shows, for tests and `sensors list`.
    pub fn lcd(&self) -> Arc<Mutex<LcdState>> {
        self.lcd.clone()
    }

    fn now_ms(&self) -> i64 {
        1_767_225_600_000 + (self.clock.now_us() / 1000) as i64
    }

    /// The board's loop running one command: how long it takes, and the reply.
    fn run(&mut self, cmd: [u8; 4]) -> (u64, Option<Vec<u8>>) {
        let now = self.now_ms();
        match cmd[0] {
            CMD_VERSION => (200, Some(vec![CMD_VERSION, 1, 3, 0])),
            CMD_DIGITAL_READ => {
                // A button pressed for a few reads now and then.
                self.button_reads += 1;
                let v = u8::from(self.button_reads % 20 < 3);
                (200, Some(vec![CMD_DIGITAL_READ, v]))
            }
            CMD_ANALOG_READ => {
                let pin = usize::from(cmd[1]);
                let v = match self.models.get_mut(pin) {
                    Some(m) => m.sample(now) as u16,
                    None => 0,
                };
                let v = v.min(1023).to_be_bytes();
                (200, Some(vec![CMD_ANALOG_READ, v[0], v[1]]))
            }
            CMD_ULTRASONIC => {
                let cm = (120.0 + 5.0 * self.rng.normal()).round().clamp(2.0, 500.0) as u16;
                // Echo time: there and back at 343 m/s, plus the trigger.
                let echo_us = u64::from(cm) * 2 * 10_000 / 343 + 20;
                let b = cm.to_be_bytes();
                (echo_us, Some(vec![CMD_ULTRASONIC, b[0], b[1]]))
            }
            CMD_DHT => {
                self.dht_reads += 1;
                let model = DhtModel::from_code(cmd[2]).unwrap_or(DhtModel::Dht11);
                let failed = self.dht_failure_every > 0 && self.dht_reads.is_multiple_of(self.dht_failure_every);
                let (t, h) = if failed {
                    (f32::NAN, f32::NAN)
                } else {
                    let r = model.resolution();
                    (((self.dht.sample(now) * r).round() / r) as f32, ((self.hum.sample(now) * r).round() / r) as f32)
                };
                let mut reply = vec![CMD_DHT];
                reply.extend_from_slice(&t.to_le_bytes());
                reply.extend_from_slice(&h.to_le_bytes());
                (25_000, Some(reply))
            }
            // Digital write, analog write, pin mode: done, nothing to send back.
            _ => (200, None),
        }
    }

    fn write_board(&mut self, bytes: &[u8]) {
        // The firmware takes a command when exactly four bytes arrive; anything else is flushed.
        let Ok(cmd) = <[u8; 4]>::try_from(bytes) else { return };
        let (delay, reply) = self.run(cmd);
        self.command = Some(cmd);
        self.ready_at = self.clock.now_us() + delay;
        self.reply = reply;
    }

    fn read_board(&mut self, buf: &mut [u8]) {
        buf.fill(0xff);
        if self.command.is_none() || buf.is_empty() {
            return;
        }
        if self.clock.now_us() < self.ready_at {
            buf[0] = NOT_READY;
            return;
        }
        if let Some(reply) = &self.reply {
            let n = reply.len().min(buf.len());
            buf[..n].copy_from_slice(&reply[..n]);
        }
    }

    fn write_lcd_text(&mut self, bytes: &[u8]) {
        let mut lcd = self.lcd.lock().unwrap_or_else(|p| p.into_inner());
        match bytes {
            [0x80, cmd] => match cmd {
                0x01 => {
                    lcd.lines = [String::new(), String::new()];
                    lcd.cursor = (0, 0);
                }
                c if c & 0x80 != 0 => lcd.cursor = (usize::from((c & 0x40) != 0), usize::from(c & 0x3f)),
                _ => {}
            },
            [0x40, ch] => {
                let (row, col) = lcd.cursor;
                let line = &mut lcd.lines[row];
                while line.chars().count() < col {
                    line.push(' ');
                }
                if col < 16 {
                    line.push(char::from(*ch));
                }
                lcd.cursor.1 += 1;
            }
            _ => {}
        }
    }

    fn write_lcd_rgb(&mut self, bytes: &[u8]) {
        let mut lcd = self.lcd.lock().unwrap_or_else(|p| p.into_inner());
        if let [reg, value] = bytes
            && let Some(r) = lcd.rgb_regs.get_mut(usize::from(*reg))
        {
            *r = *value;
            lcd.rgb = (lcd.rgb_regs[4], lcd.rgb_regs[3], lcd.rgb_regs[2]);
        }
    }
}

impl ErrorType for Board {
    type Error = EmuError;
}

impl I2c for Board {
    fn transaction(&mut self, address: u8, operations: &mut [Operation<'_>]) -> Result<(), EmuError> {
        self.transactions += 1;
        if self.bus_error_every > 0 && self.transactions.is_multiple_of(self.bus_error_every) {
            return Err(EmuError(ErrorKind::Bus));
        }
        if ![ADDRESS, LCD_TEXT, LCD_RGB].contains(&address) {
            return Err(EmuError(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)));
        }
        for op in operations {
            match (address, op) {
                (ADDRESS, Operation::Write(b)) => self.write_board(b),
                (ADDRESS, Operation::Read(b)) => self.read_board(b),
                (LCD_TEXT, Operation::Write(b)) => self.write_lcd_text(b),
                (LCD_RGB, Operation::Write(b)) => self.write_lcd_rgb(b),
                (_, Operation::Read(b)) => b.fill(0),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grovepi::{BusError, GrovePi};

    fn board() -> (GrovePi<Board, ManualPause>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let b = Board::new(clock.clone(), 7);
        (GrovePi::new(b, ManualPause(clock.clone()), "emulated"), clock)
    }

    #[test]
    fn the_firmware_side_byte_for_byte() {
        let clock = Arc::new(ManualClock::default());
        let mut b = Board::new(clock.clone(), 1);
        let mut buf = [0u8; 4];
        b.write(ADDRESS, &[CMD_VERSION, 0, 0, 0]).unwrap();
        b.read(ADDRESS, &mut buf).unwrap();
        assert_eq!(buf[0], NOT_READY, "the loop has not run yet");
        clock.0.fetch_add(1000, Ordering::SeqCst);
        b.read(ADDRESS, &mut buf).unwrap();
        assert_eq!(buf, [8, 1, 3, 0]);
        b.read(ADDRESS, &mut buf).unwrap();
        assert_eq!(buf, [8, 1, 3, 0], "the reply stays until the next command");
        b.write(ADDRESS, &[2, 4, 1, 0]).unwrap();
        clock.0.fetch_add(1000, Ordering::SeqCst);
        b.read(ADDRESS, &mut buf).unwrap();
        assert_eq!(buf, [0xff; 4], "a digital write has no reply");
        assert!(b.write(0x05, &[1, 2, 3, 4]).is_err(), "nobody at 0x05");
    }

    #[test]
    fn driver_reads_everything() {
        let (mut g, clock) = board();
        assert_eq!(g.firmware_version().unwrap(), (1, 3, 0));
        let v = g.analog_read(0).unwrap();
        assert!((50..1024).contains(&v), "{v}");
        let cm = g.ultrasonic_cm(4).unwrap();
        assert!((2..=500).contains(&cm));
        let (t, h) = g.dht(4, DhtModel::Dht22).unwrap();
        assert!(t > 10.0 && t < 35.0 && h > 20.0 && h < 90.0, "{t} {h}");
        assert_eq!((t * 10.0).round(), t * 10.0);
        let (t, _) = g.dht(4, DhtModel::Dht11).unwrap();
        assert_eq!(t.round(), t, "DHT11 reads whole degrees");
        assert!(clock.now_us() >= 50_000, "DHT reads take time");
        g.digital_write(4, true).unwrap();
        assert!(g.digital_read(3).unwrap() <= 1);
    }

    #[test]
    fn dht_failures_come_back_as_nan() {
        let (mut g, _) = board();
        let nans = (0..50).filter(|_| g.dht(4, DhtModel::Dht22).unwrap().0.is_nan()).count();
        assert_eq!(nans, 2);
    }

    #[test]
    fn bus_errors_are_retried_and_give_up() {
        let clock = Arc::new(ManualClock::default());
        let mut b = Board::new(clock.clone(), 1);
        b.bus_error_every = 7;
        let mut g = GrovePi::new(b, ManualPause(clock.clone()), "emulated");
        for _ in 0..20 {
            g.analog_read(0).unwrap();
        }
        let mut b = Board::new(clock.clone(), 1);
        b.bus_error_every = 1;
        let mut g = GrovePi::new(b, ManualPause(clock), "emulated");
        assert!(matches!(g.analog_read(0), Err(BusError::Io { .. })));
    }
}
