//! Repeated conditions said once, then summarised: the first occurrence of a
//! kind is logged; later ones within [`WINDOW`] are only counted, and the
//! next one logged says how many were held back. A flood of bad input lines
//! or refused messages costs a line a minute, not a line each.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long a kind stays quiet after it was logged.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Quiet {
    /// Kind → when it was last logged, and how many since.
    spells: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Quiet {
    /// Whether to log this occurrence of `kind` now: `Some(n)` with the `n`
    /// occurrences held back since it was last logged, or `None` to stay quiet.
    pub fn note(&self, kind: &str) -> Option<u64> {
        let now = Instant::now();
        let mut spells = self.spells.lock().unwrap_or_else(|p| p.into_inner());
        if spells.len() > 10_000 {
            spells.retain(|_, (at, _)| now.duration_since(*at) < WINDOW); // kinds from a hostile peer stay bounded
        }
        match spells.get_mut(kind) {
            Some((at, held)) if now.duration_since(*at) < WINDOW => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = std::mem::take(held);
                *at = now;
                Some(n)
            }
            None => {
                spells.insert(kind.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

static QUIET: LazyLock<Quiet> = LazyLock::new(Quiet::default);

/// Runs `say` (which logs) for this occurrence of `kind` unless it is one to
/// hold back, with the text to append: "" or " (and N more like it in the last minute)".
pub fn once_a_minute(kind: &str, say: impl FnOnce(&str)) {
    if let Some(held) = QUIET.note(kind) {
        let more = match held {
            0 => String::new(),
            n => format!(" (and {n} more like it since it was last said, within a minute)"),
        };
        say(&more);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn said_once_then_counted() {
        let q = Quiet::default();
        assert_eq!(q.note("bad line"), Some(0));
        for _ in 0..500 {
            assert_eq!(q.note("bad line"), None);
        }
        // Another kind is said at once.
        assert_eq!(q.note("refused"), Some(0));
        tokio::time::advance(WINDOW).await;
        assert_eq!(q.note("bad line"), Some(500));
        assert_eq!(q.note("bad line"), None);
    }
}
