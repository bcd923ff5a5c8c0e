//! Times as people give them on the command line, in forms and in requests,
//! and as the agent shows them: RFC 3339 in UTC unless a time zone is asked
//! for (`--tz`, `ui.time_zone`, `?tz=`).

use std::sync::RwLock;

use crate::{Error, Result};

/// A time zone to show times in: UTC (the default), an IANA zone
/// (`Europe/Paris`, from the system's tz database), a fixed offset
/// (`+05:30`) or `local` (the `TZ` variable, else `/etc/localtime`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone(Option<jiff::tz::TimeZone>);

impl Zone {
    pub const UTC: Zone = Zone(None);

    /// A zone by name; the error names the forms accepted.
    pub fn parse(name: &str) -> Result<Zone> {
        let name = name.trim();
        if name.is_empty() || name.eq_ignore_ascii_case("utc") || name == "Z" {
            return Ok(Zone::UTC);
        }
        let zone = if name.eq_ignore_ascii_case("local") {
            jiff::tz::TimeZone::try_system().map_err(|e| Error::bad(format!("the local time zone: {e}")))?
        } else if name.starts_with(['+', '-']) {
            let (_, offset) = split_offset(&format!("T{name}"));
            if offset == 0 && !name.trim_start_matches(['+', '-']).trim_matches(['0', ':']).is_empty() {
                return Err(Error::bad(format!("time zone {name:?}: an offset is +HH:MM or -HH:MM")));
            }
            let seconds = i32::try_from(offset / 1000).unwrap_or(0);
            jiff::tz::TimeZone::fixed(
                jiff::tz::Offset::from_seconds(seconds).map_err(|e| Error::bad(format!("time zone {name:?}: {e}")))?,
            )
        } else {
            jiff::tz::TimeZone::get(name).map_err(|_| {
                Error::bad(format!(
                    "{name:?} is not a time zone: use UTC, local (the TZ variable), an IANA name such as \
                     Europe/Paris, or an offset such as +01:00"
                ))
            })?
        };
        Ok(Zone(Some(zone)))
    }

    /// Its name as `parse` takes it: `UTC`, `Europe/Paris`, `+05:30`.
    pub fn name(&self) -> String {
        match &self.0 {
            None => "UTC".into(),
            Some(tz) => {
                tz.iana_name().map_or_else(|| offset_name(tz.to_offset(jiff::Timestamp::now())), str::to_string)
            }
        }
    }

    /// This zone's offset from UTC at `ms`, in ms.
    pub fn offset_ms(&self, ms: i64) -> i64 {
        match (&self.0, jiff::Timestamp::from_millisecond(ms)) {
            (Some(tz), Ok(t)) => i64::from(tz.to_offset(t).seconds()) * 1000,
            _ => 0,
        }
    }

    /// `ms` as RFC 3339 in this zone, with milliseconds: `…Z` in UTC,
    /// `…+01:00` elsewhere. Never panics: outside the years jiff can show,
    /// the UTC form.
    pub fn format(&self, ms: i64) -> String {
        let Some(tz) = &self.0 else { return edgeseal_core::time::format_ms(ms) };
        match jiff::Timestamp::from_millisecond(ms) {
            Ok(t) => t.to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
            Err(_) => edgeseal_core::time::format_ms(ms),
        }
    }
}

fn offset_name(o: jiff::tz::Offset) -> String {
    let s = o.seconds();
    format!("{}{:02}:{:02}", if s < 0 { '-' } else { '+' }, s.abs() / 3600, s.abs() % 3600 / 60)
}

/// The zone this process shows times in unless a request asks for another.
static OUTPUT: RwLock<Zone> = RwLock::new(Zone::UTC);

tokio::task_local! {
    /// A request's own zone (the API's `?tz=`), over [`OUTPUT`].
    static REQUEST: Zone;
}

/// Sets the zone this process shows times in (`--tz`, `ui.time_zone`).
pub fn set_output_zone(zone: Zone) {
    *OUTPUT.write().unwrap_or_else(std::sync::PoisonError::into_inner) = zone;
}

/// The zone times are shown in here: the request's, else the process's.
pub fn output_zone() -> Zone {
    REQUEST
        .try_with(Zone::clone)
        .unwrap_or_else(|_| OUTPUT.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
}

/// Runs `f` with times shown in `zone`.
pub async fn in_zone<F: Future>(zone: Zone, f: F) -> F::Output {
    REQUEST.scope(zone, f).await
}

/// `ms` as RFC 3339 in the zone times are shown in here ([`output_zone`]).
pub fn format_ms(ms: i64) -> String {
    output_zone().format(ms)
}

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

    #[test]
    fn zones() {
        let t = 1_767_225_600_250; // 2026-01-01T00:00:00.250Z
        assert_eq!(Zone::parse("UTC").unwrap().format(t), "2026-01-01T00:00:00.250Z");
        let paris = Zone::parse("Europe/Paris").unwrap();
        assert_eq!(
            (paris.format(t).as_str(), paris.name().as_str()),
            ("2026-01-01T01:00:00.250+01:00", "Europe/Paris")
        );
        // Summer time: the offset of that instant.
        assert_eq!(paris.format(1_782_864_000_000), "2026-07-01T02:00:00.000+02:00");
        let india = Zone::parse("+05:30").unwrap();
        assert_eq!((india.format(t).as_str(), india.name().as_str()), ("2026-01-01T05:30:00.250+05:30", "+05:30"));
        // What is shown reads back as the same instant.
        for z in [&paris, &india] {
            assert_eq!(parse_time(&z.format(t), 0).unwrap(), t);
        }
        assert!(Zone::parse("Mars/Olympus").unwrap_err().to_string().contains("IANA"));
        assert!(Zone::parse("+99:00").is_err());
        // Out of jiff's range: the UTC form, no panic.
        assert!(paris.format(i64::MAX).ends_with('Z'));
    }

    #[tokio::test]
    async fn a_request_zone_is_its_own() {
        let paris = Zone::parse("Europe/Paris").unwrap();
        let inside = in_zone(paris.clone(), async { format_ms(0) }).await;
        assert_eq!(inside, "1970-01-01T01:00:00.000+01:00");
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
