//! Times on the command line and in output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Parses `now`, RFC 3339 (`2026-11-22T10:00:00Z`), a relative time (`-1h`,
/// `-30m`, `-2d`, `+5m`) or milliseconds since the Unix epoch.
pub fn parse_time(s: &str, now: i64) -> Result<i64> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(rel) = s.strip_prefix('-').or_else(|| s.strip_prefix('+'))
        && let Ok(d) = humantime::parse_duration(rel)
    {
        let ms = i64::try_from(d.as_millis()).map_err(|_| anyhow!("time {s:?} is too far away"))?;
        return Ok(if s.starts_with('-') { now - ms } else { now + ms });
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(system_to_ms(t));
    }
    Err(anyhow!(
        "{s:?} is not a time: use RFC 3339 (2026-11-22T10:00:00Z), a relative time (-1h, -30m, -2d), now, or milliseconds since 1970"
    ))
}

fn system_to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn format_ms(ms: i64) -> String {
    let t = if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    };
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("-1h", now).unwrap(), now - 3_600_000);
        assert_eq!(parse_time("+5m", now).unwrap(), now + 300_000);
        assert_eq!(parse_time("2026-01-01T00:00:00Z", now).unwrap(), 1_767_225_600_000);
        assert_eq!(parse_time("1000", now).unwrap(), 1000);
        assert!(parse_time("yesterday", now).unwrap_err().to_string().contains("RFC 3339"));
        assert_eq!(format_ms(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
    }
}
