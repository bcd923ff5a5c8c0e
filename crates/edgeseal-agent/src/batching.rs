//! Batch policies as people write and read them: the forms' and the API's
//! fields, the texts `up` and the UI show, and the policy kept in state.db
//! when it is set while the agent runs.

use std::time::Duration;

use edgeseal_sensors::batcher::Policy;
use edgeseal_store::local::LocalState;
use tracing::warn;

use crate::{Error, Result};

/// The settings key under which a batch policy set while running is kept (state.db).
pub(crate) const SETTING: &str = "batch";
/// The most readings a batch may be set to hold from the UI (a batch's readings are sealed in memory at once).
pub const MAX_BATCH: usize = 100_000;

/// A policy's interval as the forms and the API take it: "1m", "500ms", or "off".
pub fn interval_text(p: Policy) -> String {
    match p.interval_ms {
        Some(ms) => humantime::format_duration(Duration::from_millis(ms.max(0) as u64)).to_string(),
        None => "off".into(),
    }
}

/// "every 10 readings", "every 1m", "1000 readings or 1m, whichever comes first".
pub fn describe_policy(p: Policy) -> String {
    match (p.count, p.interval_ms) {
        (0, Some(_)) => format!("every {}", interval_text(p)),
        (c, None) => format!("every {c} readings"),
        (c, Some(_)) => format!("{c} readings or {}, whichever comes first", interval_text(p)),
    }
}

/// How a policy set while running is kept in state.db.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Kept {
    pub count: usize,
    pub interval_ms: Option<i64>,
}

/// The batch policy set from the web UI or API before, if any (a corrupt value is reported and ignored).
pub async fn kept_policy(local: &LocalState) -> Option<Policy> {
    let text = match local.setting(SETTING).await {
        Ok(t) => t?,
        Err(e) => {
            warn!("cannot read the settings in state.db: {e}");
            return None;
        }
    };
    match serde_json::from_str::<Kept>(&text) {
        Ok(k) if k.count > 0 || k.interval_ms.is_some() => Some(Policy { count: k.count, interval_ms: k.interval_ms }),
        _ => {
            warn!("ignoring the batch setting kept in state.db, which is not valid: {text:?}");
            None
        }
    }
}

/// Parses a batch policy from the form or API fields: a count (0 = no limit) and an interval ("30s", "off").
pub fn parse_policy(count: &str, interval: &str) -> Result<Policy> {
    let count: usize = count
        .trim()
        .parse()
        .map_err(|_| Error::bad(format!("batch count {count:?} is not a whole number (0 for no count limit)")))?;
    if count > MAX_BATCH {
        return Err(Error::bad(format!("batch count {count} is above the most a batch may hold here, {MAX_BATCH}")));
    }
    let interval_ms = match interval.trim() {
        "" | "off" | "none" => None,
        t => {
            let d = humantime::parse_duration(t)
                .map_err(|_| Error::bad(format!("batch interval {t:?} is not a duration (e.g. 30s, 5m) or \"off\"")))?;
            if d < Duration::from_millis(10) {
                return Err(Error::bad(format!("batch interval {t:?} is shorter than 10ms")));
            }
            Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
    };
    if count == 0 && interval_ms.is_none() {
        return Err(Error::bad("a batch count of 0 with the interval off would never cut a batch; set at least one"));
    }
    Ok(Policy { count, interval_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_from_the_form() {
        assert_eq!(parse_policy("100", "30s").unwrap(), Policy { count: 100, interval_ms: Some(30_000) });
        assert_eq!(parse_policy(" 5 ", "off").unwrap(), Policy { count: 5, interval_ms: None });
        assert_eq!(parse_policy("0", "1m").unwrap(), Policy { count: 0, interval_ms: Some(60_000) });
        for (count, interval, says) in [
            ("-1", "off", "not a whole number"),
            ("0", "", "never cut a batch"),
            ("1000000", "off", "above the most"),
            ("10", "soon", "not a duration"),
            ("10", "1ms", "shorter than 10ms"),
        ] {
            let e = parse_policy(count, interval).unwrap_err();
            assert!(matches!(e, Error::BadInput(_)) && e.to_string().contains(says), "{count:?} {interval:?}: {e}");
        }
        assert_eq!(describe_policy(Policy { count: 7, interval_ms: None }), "every 7 readings");
    }
}
