//! The one owner of the I²C bus: a thread that holds the driver and serves
//! requests one at a time, so sensors, the LCD and probes never interleave
//! on the wire (the original polled the board from three places at once).

use std::sync::Arc;
use std::sync::mpsc::{Sender, SyncSender, channel, sync_channel};

use embedded_hal::i2c::I2c;

use super::emulator::{Board, LCD_RGB, LCD_TEXT, SystemClock};
use super::{ADDRESS, BusError, DhtModel, GrovePi, Pause, Sleep, lcd};

/// A request to the bus owner.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Version,
    DigitalRead(u8),
    AnalogRead(u8),
    Ultrasonic(u8),
    Dht(u8, DhtModel),
    /// Show two lines and set the backlight.
    Lcd {
        lines: [String; 2],
        rgb: (u8, u8, u8),
    },
    /// Addresses that acknowledge a read, 0x03..=0x77.
    Scan,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Version(u8, u8, u8),
    Value(u16),
    Dht(f32, f32),
    Addresses(Vec<u8>),
    Done,
}

type Job = (Op, Sender<Result<Answer, BusError>>);

/// A handle on the bus owner; cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: SyncSender<Job>,
    name: Arc<str>,
}

impl Bus {
    /// Starts the owner thread for a driver.
    pub fn spawn<I, P>(mut driver: GrovePi<I, P>) -> Bus
    where
        I: I2c + Send + 'static,
        P: Pause + 'static,
    {
        let name: Arc<str> = driver.bus_name().into();
        let (tx, rx) = sync_channel::<Job>(16);
        std::thread::Builder::new()
            .name("grovepi-bus".into())
            .spawn(move || {
                while let Ok((op, reply)) = rx.recv() {
                    let _ = reply.send(serve(&mut driver, op));
                }
            })
            .expect("the OS can start a thread");
        Bus { tx, name }
    }

    /// Opens `/dev/i2c-N`, or the emulated board for `emulated`, and checks
    /// that a GrovePi answers.
    pub fn open(spec: &str) -> Result<Bus, BusError> {
        let bus = if spec == "emulated" {
            Bus::spawn(GrovePi::new(Board::new(Arc::new(SystemClock::default()), 1), Sleep, "emulated"))
        } else {
            let dev = linux_embedded_hal::I2cdev::new(spec)
                .map_err(|e| BusError::NoBoard { bus: spec.to_string(), cause: e.to_string() })?;
            Bus::spawn(GrovePi::new(dev, Sleep, spec))
        };
        match bus.call(Op::Version) {
            Ok(_) => Ok(bus),
            Err(e) => Err(BusError::NoBoard { bus: spec.to_string(), cause: e.to_string() }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs one request; blocks until the bus owner answers.
    pub fn call(&self, op: Op) -> Result<Answer, BusError> {
        let (tx, rx) = channel();
        self.tx.send((op, tx)).map_err(|_| BusError::Closed)?;
        rx.recv().map_err(|_| BusError::Closed)?
    }
}

fn serve<I: I2c, P: Pause>(g: &mut GrovePi<I, P>, op: Op) -> Result<Answer, BusError> {
    let name = g.bus_name().to_string();
    let io = |e: I::Error| BusError::Io { bus: name.clone(), cause: format!("{e:?}") };
    Ok(match op {
        Op::Version => {
            let (a, b, c) = g.firmware_version()?;
            Answer::Version(a, b, c)
        }
        Op::DigitalRead(p) => Answer::Value(u16::from(g.digital_read(p)?)),
        Op::AnalogRead(p) => Answer::Value(g.analog_read(p)?),
        Op::Ultrasonic(p) => Answer::Value(g.ultrasonic_cm(p)?),
        Op::Dht(p, m) => {
            let (t, h) = g.dht(p, m)?;
            Answer::Dht(t, h)
        }
        Op::Lcd { lines, rgb } => {
            lcd::show(g.i2c(), [&lines[0], &lines[1]]).map_err(io)?;
            lcd::set_rgb(g.i2c(), rgb).map_err(io)?;
            Answer::Done
        }
        Op::Scan => {
            let mut found = Vec::new();
            for addr in 0x03..=0x77u8 {
                let mut b = [0u8; 1];
                if g.i2c().read(addr, &mut b).is_ok() {
                    found.push(addr);
                }
            }
            Answer::Addresses(found)
        }
    })
}

/// What is known to live at an I²C address.
pub fn device_name(addr: u8) -> &'static str {
    match addr {
        ADDRESS => "GrovePi+",
        LCD_TEXT => "Grove LCD (text)",
        LCD_RGB => "Grove LCD (RGB backlight)",
        _ => "unknown device",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_threads_one_owner() {
        let bus = Bus::open("emulated").unwrap();
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let bus = bus.clone();
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        match bus.call(Op::AnalogRead(i % 3)).unwrap() {
                            Answer::Value(v) => assert!(v <= 1023),
                            other => panic!("{other:?}"),
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(bus.call(Op::Scan).unwrap(), Answer::Addresses(vec![ADDRESS, LCD_TEXT, LCD_RGB]));
    }

    #[test]
    fn a_missing_bus_is_named() {
        let e = Bus::open("/dev/i2c-nonexistent").unwrap_err().to_string();
        assert!(e.contains("no GrovePi answers at address 0x04 on /dev/i2c-nonexistent"), "{e}");
    }
}
