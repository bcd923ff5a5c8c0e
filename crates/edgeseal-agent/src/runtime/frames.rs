//! Live frames: the readings of each journal commit, handed from the sealer
//! to the [`super::sharing::FrameSender`] the moment they are accepted, for
//! the streams some peer is granted. Frames ride beside the stored batches
//! and replace none of them, so this path may drop: a full channel or a
//! broker that is down costs a peer latency (it gets the readings with the
//! stored batch), never data.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use edgeseal_core::{Reading, StreamName};
use tokio::sync::mpsc;

use super::Stats;

/// Journal commits waiting for the frame sender before the sealer drops new ones.
const WAITING_MAX: usize = 256;

/// Readings of one stream that one journal commit accepted, from `first_pos` on.
#[derive(Debug)]
pub struct Accepted {
    pub stream: StreamName,
    pub first_pos: u64,
    pub readings: Vec<Reading>,
}

/// The streams granted to at least one peer (the frame sender keeps it up to date).
#[derive(Debug, Default)]
pub struct LiveStreams(RwLock<HashSet<StreamName>>);

impl LiveStreams {
    pub fn contains(&self, s: &StreamName) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(s)
    }

    pub fn is_empty(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    pub fn replace(&self, streams: HashSet<StreamName>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = streams;
    }
}

/// The sealer's end.
#[derive(Debug)]
pub struct FrameTap {
    tx: mpsc::Sender<Accepted>,
    streams: Arc<LiveStreams>,
}

/// The frame sender's end.
#[derive(Debug)]
pub struct FrameFeed {
    pub rx: mpsc::Receiver<Accepted>,
    pub streams: Arc<LiveStreams>,
}

pub fn channel() -> (FrameTap, FrameFeed) {
    let (tx, rx) = mpsc::channel(WAITING_MAX);
    let streams = Arc::new(LiveStreams::default());
    (FrameTap { tx, streams: streams.clone() }, FrameFeed { rx, streams })
}

/// The runs of `readings` (in order) that lie between the same two of
/// `times` (ascending): a frame holds one run, so none has readings from both
/// sides of a time a grant begins or ends after.
pub fn runs_between(readings: &[Reading], times: &[i64]) -> Vec<std::ops::Range<usize>> {
    let between = |r: &Reading| times.partition_point(|t| *t <= r.ts);
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=readings.len() {
        if i == readings.len() || between(&readings[i]) != between(&readings[i - 1]) {
            runs.push(start..i);
            start = i;
        }
    }
    runs
}

impl FrameTap {
    /// Offers what a journal commit accepted of `stream`. Copies nothing
    /// unless the stream is granted and a sender listens; drops (counted)
    /// when the sender is behind.
    pub fn offer(&self, stream: &StreamName, first_pos: u64, readings: &[Reading], stats: &Stats) {
        if self.tx.is_closed() || !self.streams.contains(stream) {
            return;
        }
        let a = Accepted { stream: stream.clone(), first_pos, readings: readings.to_vec() };
        if self.tx.try_send(a).is_err() {
            stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeseal_core::Value;

    #[test]
    fn frames_are_split_at_grant_times() {
        let r = |ts| Reading {
            stream: StreamName::new("t").unwrap(),
            ts,
            value: Value::Scalar { value: 1.0, unit: String::new(), label: None },
        };
        let readings: Vec<Reading> = [5, 9, 10, 12, 15, 16, 3].into_iter().map(r).collect();
        assert_eq!(runs_between(&readings, &[10, 15]), [0..2, 2..4, 4..6, 6..7]);
        assert_eq!(runs_between(&readings, &[]), [0..7]);
        assert!(runs_between(&[], &[10]).is_empty());
    }
}
