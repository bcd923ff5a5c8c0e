//! Timestamps: milliseconds since the Unix epoch (UTC), as readings and
//! headers carry them, written as RFC 3339.
//!
//! [`format_ms`] is total: any `i64` gives a string, so a hostile store row
//! or a peer's batch can never make a reader panic. Readings are accepted only
//! within [`MIN_TS`]`..=`[`MAX_TS`], the years 0000–9999 that RFC 3339
//! (section 5.6, `date-fullyear = 4DIGIT`) can write; outside it the
//! formatter falls back to ISO 8601's expanded years (`+10000-…`, `-0001-…`).

/// 0000-01-01T00:00:00.000Z.
pub const MIN_TS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z.
pub const MAX_TS: i64 = 253_402_300_799_999;

/// RFC 3339 with milliseconds, UTC: `2026-01-01T00:00:00.000Z`. Never panics.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let year = match y {
        0..=9999 => format!("{y:04}"),
        y if y < 0 => format!("-{:04}", -y),
        y => format!("+{y}"),
    };
    format!("{year}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", of_day / 3600, of_day % 3600 / 60, of_day % 60)
}

/// The proleptic Gregorian (year, month, day) of a day number (0 = 1970-01-01),
/// after H. Hinnant's `civil_from_days`; in i128 so no input overflows.
fn civil_from_days(days: i64) -> (i128, u32, u32) {
    let z = i128::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i128::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_times_and_the_edges() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_ms(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(MIN_TS), "0000-01-01T00:00:00.000Z");
        assert_eq!(format_ms(MAX_TS), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_ms(MAX_TS + 1), "+10000-01-01T00:00:00.000Z");
        assert_eq!(format_ms(MIN_TS - 1), "-0001-12-31T23:59:59.999Z");
        for ms in [i64::MIN, i64::MAX, i64::MIN + 1, i64::MAX - 1] {
            assert!(format_ms(ms).ends_with('Z'));
        }
    }

    proptest! {
        /// Where humantime can write a time (1970–9999), both agree.
        #[test]
        fn agrees_with_humantime(ms in 0i64..=MAX_TS) {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            prop_assert_eq!(format_ms(ms), humantime::format_rfc3339_millis(t).to_string());
        }

        #[test]
        fn any_time_formats(ms: i64) {
            let s = format_ms(ms);
            prop_assert!(s.ends_with('Z') && s.contains('T'));
        }
    }
}
