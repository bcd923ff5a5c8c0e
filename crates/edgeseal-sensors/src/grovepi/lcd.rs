//! The Grove LCD RGB Backlight (v4): a 16×2 text display at 0x3e and an RGB
//! backlight (PCA9633) at 0x62, on the same I²C bus as the GrovePi.

use embedded_hal::i2c::I2c;

use super::emulator::{LCD_RGB, LCD_TEXT};

/// Characters per line.
pub const WIDTH: usize = 16;

/// Shows two lines of text; characters outside printable ASCII become `?`.
pub fn show<I: I2c>(i2c: &mut I, lines: [&str; 2]) -> Result<(), I::Error> {
    text_command(i2c, 0x01)?; // clear
    text_command(i2c, 0x08 | 0x04)?; // display on, no cursor
    text_command(i2c, 0x28)?; // two lines
    for (row, line) in lines.iter().enumerate() {
        text_command(i2c, if row == 0 { 0x80 } else { 0xc0 })?;
        for c in line.chars().take(WIDTH) {
            let b = if c.is_ascii_graphic() || c == ' ' { c as u8 } else { b'?' };
            i2c.write(LCD_TEXT, &[0x40, b])?;
        }
    }
    Ok(())
}

/// Sets the backlight colour.
pub fn set_rgb<I: I2c>(i2c: &mut I, (r, g, b): (u8, u8, u8)) -> Result<(), I::Error> {
    for (reg, value) in [(0x00, 0x00), (0x01, 0x00), (0x08, 0xaa), (0x04, r), (0x03, g), (0x02, b)] {
        i2c.write(LCD_RGB, &[reg, value])?;
    }
    Ok(())
}

fn text_command<I: I2c>(i2c: &mut I, cmd: u8) -> Result<(), I::Error> {
    i2c.write(LCD_TEXT, &[0x80, cmd])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grovepi::emulator::{Board, ManualClock};
    use std::sync::Arc;

    #[test]
    fn text_and_colour_reach_the_display() {
        let mut b = Board::new(Arc::new(ManualClock::default()), 1);
        let lcd = b.lcd();
        show(&mut b, ["temp 21.5C", "hum 43.0% and a long tail"]).unwrap();
        set_rgb(&mut b, (0, 128, 0)).unwrap();
        let state = lcd.lock().unwrap().clone();
        assert_eq!(state.lines, ["temp 21.5C".to_string(), "hum 43.0% and a ".to_string()]);
        assert_eq!(state.rgb, (0, 128, 0));
    }
}
