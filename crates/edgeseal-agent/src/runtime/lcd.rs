//! The Grove LCD as an output: the latest readings, two streams at a time,
//! and the agent's state as the backlight colour (green running, orange
//! broker down, red store down).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use edgeseal_core::StreamName;
use edgeseal_sensors::grovepi::bus::{Bus, Op};
use edgeseal_sensors::grovepi::lcd::WIDTH;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Stats;
use crate::config::LcdConfig;

#[derive(Debug)]
pub struct Lcd {
    pub bus: Bus,
    pub cfg: LcdConfig,
    pub stats: Arc<Stats>,
}

impl Lcd {
    /// Refreshes the display until `shutdown`, then shows "stopped".
    pub async fn run(self, shutdown: CancellationToken) {
        let Lcd { bus, cfg, stats } = self;
        let mut tick = tokio::time::interval(cfg.refresh);
        let mut page = 0usize;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let lines = lcd_lines(&cfg.streams, page, &stats);
            page = page.wrapping_add(1);
            let rgb = if stats.store_down.load(Ordering::Relaxed) {
                (255, 0, 0)
            } else if stats.broker_down.load(Ordering::Relaxed) {
                (255, 120, 0)
            } else {
                (0, 160, 0)
            };
            let bus = bus.clone();
            match tokio::task::spawn_blocking(move || bus.call(Op::Lcd { lines, rgb })).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => debug!("lcd: {e}"),
                Err(e) => debug!("lcd: {e}"),
            }
        }
        let _ = tokio::task::spawn_blocking(move || {
            bus.call(Op::Lcd { lines: ["edgeseal".into(), "stopped".into()], rgb: (0, 0, 60) })
        })
        .await;
    }
}

/// Two 16-character lines for page `page` of the streams.
fn lcd_lines(streams: &[StreamName], page: usize, stats: &Stats) -> [String; 2] {
    let latest = stats.latest.lock().unwrap_or_else(|p| p.into_inner());
    let mut lines = [String::new(), String::new()];
    let n = streams.len().max(1);
    for (row, line) in lines.iter_mut().enumerate() {
        let Some(stream) = streams.get((page.wrapping_mul(2).wrapping_add(row)) % n) else { continue };
        let value = match latest.get(stream) {
            Some((v, unit)) => format!("{v}{}", unit.replace("°", "")),
            None => "-".to_string(),
        };
        let room = WIDTH.saturating_sub(value.len() + 1);
        let name: String = stream.as_str().chars().take(room).collect();
        *line = format!("{name:<room$} {value}");
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcd_pages_fit_sixteen_columns() {
        let stats = Stats::default();
        let s = |n: &str| StreamName::new(n).unwrap();
        stats.latest.lock().unwrap().insert(s("temperature"), (21.5, "°C".into()));
        stats.latest.lock().unwrap().insert(s("a_very_long_stream_name"), (1023.0, "adc".into()));
        let streams = [s("temperature"), s("a_very_long_stream_name"), s("humidity")];
        let page0 = lcd_lines(&streams, 0, &stats);
        // The value is kept whole; the name gives way.
        assert_eq!(page0, ["temperatur 21.5C".to_string(), "a_very_l 1023adc".to_string()]);
        let page1 = lcd_lines(&streams, 1, &stats);
        assert!(page1[0].starts_with("humidity") && page1[0].ends_with(" -"), "{page1:?}");
        assert!(page0.iter().chain(page1.iter()).all(|l| l.chars().count() <= 16), "{page0:?} {page1:?}");
    }
}
