//! Times as people give them on the command line, in forms and in requests.

use crate::{Error, Result};

pub use edgeseal_core::time::format_ms;

/// Parses `now`, RFC 3339 (`2026-11-22T10:00:00Z`, or with an offset such as `+01:00`), a relative time (`-1h`,
/// `-30m`, `-2d`, `+5m`) or milliseconds since the Unix epoch.
pub fn parse_time(s: &str, now: i64) -> Result<i64> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(rel) = s.strip_prefix('-').or_else(|| s.strip_prefix('+'))
        && let Ok(d) = humantime::parse_duration(rel)
    {
        let ms = i64::try_from(d.as_millis()).map_err(|_| Error::bad(format!("time {s:?} is too far away")))?;
        let t = if s.starts_with('-') { now.checked_sub(ms) } else { now.checked_add(ms) };
        return t.ok_or_else(|| Error::bad(format!("time {s:?} is too far away")));
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let (civil, offset_ms) = split_offset(s);
    if let Ok(t) = humantime::parse_rfc3339_weak(civil) {
        let ms = match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        };
        return ms.checked_sub(offset_ms).ok_or_else(|| Error::bad(format!("time {s:?} is too far away")));
    }
    Err(Error::bad(format!(
        "{s:?} is not a time: use RFC 3339 (2026-11-22T10:00:00Z), a relative time (-1h, -30m, -2d), now, or milliseconds since 1970"
    )))
}

/// An RFC 3339 time's UTC offset (`+01:00`, `-0530`) split off its date and
/// time: (the rest, the offset in ms). No offset (or `Z`): the time as given, 0.
fn split_offset(s: &str) -> (&str, i64) {
    let Some(t) = s.find(['T', 't', ' ']) else { return (s, 0) };
    let Some(at) = s[t..].rfind(['+', '-']).map(|i| t + i) else { return (s, 0) };
    let (sign, digits) = (if s.as_bytes()[at] == b'-' { -1 } else { 1 }, s[at + 1..].replace(':', ""));
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return (s, 0);
    }
    let (h, m): (i64, i64) = (digits[..2].parse().unwrap_or(0), digits[2..].parse().unwrap_or(0));
    if h > 23 || m > 59 {
        return (s, 0);
    }
    (&s[..at], sign * (h * 60 + m) * 60_000)
}

/// `value` named as `what` ("from", "--from"): a time, or an error that names the field.
pub fn parse_named(what: &str, value: Option<&str>, now: i64) -> Result<Option<i64>> {
    value.map(|t| parse_time(t, now).map_err(|e| Error::bad(format!("{what}: {e}")))).transpose()
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
        // With an offset: the same instant as in UTC.
        assert_eq!(parse_time("2026-01-01T01:00:00+01:00", now).unwrap(), 1_767_225_600_000);
        assert_eq!(parse_time("2025-12-31T18:30:00-05:30", now).unwrap(), 1_767_225_600_000);
        assert_eq!(parse_time("2026-01-01T00:00:00.250+0000", now).unwrap(), 1_767_225_600_250);
        assert!(parse_time("2026-01-01T00:00:00+25:00", now).is_err());
        assert!(parse_time("yesterday", now).unwrap_err().to_string().contains("RFC 3339"));
        assert_eq!(format_ms(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
    }
}
