//! Cutting streams into batches by count, by age, or both (whichever first).
//!
//! Pure: the caller passes the time in and gets back the readings to seal,
//! each with the caller's id of the last reading (its journal id).
//!
//! Batches can also be cut at given reading times ([`Batcher::cut_at`]): a
//! grant of a time range opens the batches that *begin* in it, so a batch
//! must not straddle the time a grant starts or ends.

use std::collections::{BTreeMap, HashMap};

use edgeseal_core::{Reading, StreamName};

/// When to cut a stream's open batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Cut when this many readings are open (0 means no count limit).
    pub count: usize,
    /// Cut when the oldest open reading arrived this long ago, in ms (`None`: no age limit).
    pub interval_ms: Option<i64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { count: 1000, interval_ms: Some(300_000) }
    }
}

/// A batch ready to seal.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub stream: StreamName,
    pub readings: Vec<Reading>,
    /// The caller's id of each reading (its journal id), aligned with `readings`.
    pub ids: Vec<i64>,
}

#[derive(Debug)]
struct Open {
    opened_at: i64,
    readings: Vec<Reading>,
    ids: Vec<i64>,
}

#[derive(Debug, Default)]
pub struct Batcher {
    default: Policy,
    per_stream: HashMap<StreamName, Policy>,
    open: BTreeMap<StreamName, Open>,
    /// Reading times (ascending) at which a stream's batch must start anew.
    boundaries: HashMap<StreamName, Vec<i64>>,
}

impl Batcher {
    pub fn new(default: Policy, per_stream: HashMap<StreamName, Policy>) -> Batcher {
        Batcher { default, per_stream, open: BTreeMap::new(), boundaries: HashMap::new() }
    }

    /// From now on, no batch of `stream` holds readings both before and after
    /// any of `times`: the open batch is split there now (at its first
    /// reading at or after the time), and a later reading at or after a time
    /// starts a new batch. Returns what is cut now.
    pub fn cut_at(&mut self, stream: &StreamName, times: &[i64]) -> Vec<Cut> {
        let mut cuts = Vec::new();
        for &t in times {
            let Some(open) = self.open.get_mut(stream) else { break };
            if let Some(k) = open.readings.iter().position(|r| r.ts >= t)
                && k > 0
                && open.readings[..k].iter().any(|r| r.ts < t)
            {
                let readings: Vec<Reading> = open.readings.drain(..k).collect();
                let ids: Vec<i64> = open.ids.drain(..k).collect();
                cuts.push(Cut { stream: stream.clone(), readings, ids });
            }
        }
        let b = self.boundaries.entry(stream.clone()).or_default();
        b.extend_from_slice(times);
        b.sort_unstable();
        b.dedup();
        cuts
    }

    /// Whether any stream has a time to be cut at (a cheap test for the hot path).
    pub fn watching(&self) -> bool {
        !self.boundaries.is_empty()
    }

    /// Call before [`Batcher::push`]ing `reading` while [`Batcher::watching`]:
    /// cuts its stream's open batch when the reading passes a cut time that
    /// readings in that batch are before.
    pub fn at_boundary(&mut self, reading: &Reading) -> Option<Cut> {
        let times = self.boundaries.get_mut(&reading.stream)?;
        let passed = times.iter().take_while(|t| **t <= reading.ts).count();
        let last = passed.checked_sub(1).map(|i| times[i]);
        times.drain(..passed);
        if times.is_empty() {
            self.boundaries.remove(&reading.stream);
        }
        let t = last?;
        let straddles = self.open.get(&reading.stream)?.readings.iter().any(|r| r.ts < t);
        if straddles { self.cut(&reading.stream) } else { None }
    }

    /// The policy of streams without their own, which a running agent may change (the web UI's batch size).
    pub fn default_policy(&self) -> Policy {
        self.default
    }

    /// Changes the policy of streams without their own; open batches are cut by it from now on.
    pub fn set_default(&mut self, policy: Policy) {
        self.default = policy;
    }

    pub fn policy(&self, stream: &StreamName) -> Policy {
        self.per_stream.get(stream).copied().unwrap_or(self.default)
    }

    /// Adds a reading (with the caller's id) at monotonic time `now`; returns a cut when the count is reached.
    pub fn push(&mut self, id: i64, reading: Reading, now: i64) -> Option<Cut> {
        let policy = self.policy(&reading.stream);
        let stream = reading.stream.clone();
        let open = self.open.entry(stream.clone()).or_insert_with(|| Open {
            opened_at: now,
            readings: Vec::new(),
            ids: Vec::new(),
        });
        open.readings.push(reading);
        open.ids.push(id);
        if policy.count > 0 && open.readings.len() >= policy.count {
            return self.cut(&stream);
        }
        None
    }

    /// Cuts every stream whose open batch is older than its interval.
    pub fn due(&mut self, now: i64) -> Vec<Cut> {
        let due: Vec<StreamName> = self
            .open
            .iter()
            .filter(|(s, o)| self.policy(s).interval_ms.is_some_and(|i| now.saturating_sub(o.opened_at) >= i))
            .map(|(s, _)| s.clone())
            .collect();
        due.iter().filter_map(|s| self.cut(s)).collect()
    }

    /// The earliest monotonic time at which [`Batcher::due`] will cut something.
    pub fn next_deadline(&self) -> Option<i64> {
        // Saturating: an interval of any length is a deadline, never an overflow.
        self.open.iter().filter_map(|(s, o)| self.policy(s).interval_ms.map(|i| o.opened_at.saturating_add(i))).min()
    }

    /// Cuts everything (on shutdown, or "store now").
    pub fn flush(&mut self) -> Vec<Cut> {
        let streams: Vec<StreamName> = self.open.keys().cloned().collect();
        streams.iter().filter_map(|s| self.cut(s)).collect()
    }

    /// Cuts one stream's open batch now, if it has one.
    pub fn take(&mut self, stream: &StreamName) -> Option<Cut> {
        self.cut(stream)
    }

    /// Puts a cut back in front of its stream's open batch (its readings are
    /// the older ones), as when sealing it failed; the batch counts as opened `now`.
    pub fn put_back(&mut self, cut: Cut, now: i64) {
        let open = self.open.entry(cut.stream).or_insert_with(|| Open {
            opened_at: now,
            readings: Vec::new(),
            ids: Vec::new(),
        });
        let (mut readings, mut ids) = (cut.readings, cut.ids);
        readings.append(&mut open.readings);
        ids.append(&mut open.ids);
        open.readings = readings;
        open.ids = ids;
        open.opened_at = now;
    }

    /// Readings waiting in open batches.
    pub fn open_readings(&self) -> usize {
        self.open.values().map(|o| o.readings.len()).sum()
    }

    fn cut(&mut self, stream: &StreamName) -> Option<Cut> {
        let open = self.open.remove(stream)?;
        Some(Cut { stream: stream.clone(), readings: open.readings, ids: open.ids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeseal_core::Value;

    fn r(stream: &str, ts: i64) -> Reading {
        Reading {
            stream: StreamName::new(stream).unwrap(),
            ts,
            value: Value::Scalar { value: 1.0, unit: String::new(), label: None },
        }
    }

    #[test]
    fn count_interval_or_both() {
        let mut per = HashMap::new();
        per.insert(StreamName::new("slow").unwrap(), Policy { count: 0, interval_ms: Some(100) });
        let mut b = Batcher::new(Policy { count: 3, interval_ms: Some(1000) }, per);
        assert!(b.push(1, r("fast", 0), 0).is_none());
        assert!(b.push(2, r("fast", 1), 1).is_none());
        let cut = b.push(3, r("fast", 2), 2).unwrap();
        assert_eq!((cut.readings.len(), cut.ids), (3, vec![1, 2, 3]));
        assert!(b.push(4, r("slow", 0), 10).is_none());
        assert!(b.push(5, r("fast", 3), 20).is_none());
        assert_eq!(b.next_deadline(), Some(110));
        assert!(b.due(109).is_empty());
        let cuts = b.due(110);
        assert_eq!(cuts.len(), 1);
        assert_eq!(cuts[0].stream.as_str(), "slow");
        assert_eq!(b.due(1020).len(), 1, "fast is cut by age before its count");
        assert_eq!(b.open_readings(), 0);
    }

    #[test]
    fn a_new_default_applies_to_open_batches() {
        let mut b = Batcher::new(Policy { count: 100, interval_ms: None }, HashMap::new());
        b.push(1, r("a", 0), 0);
        b.push(2, r("a", 1), 0);
        b.set_default(Policy { count: 3, interval_ms: Some(50) });
        assert_eq!(b.next_deadline(), Some(50));
        assert_eq!(b.push(3, r("a", 2), 1).map(|c| c.ids), Some(vec![1, 2, 3]));
    }

    #[test]
    fn a_cut_put_back_goes_before_what_arrived_since() {
        let mut b = Batcher::new(Policy { count: 2, interval_ms: None }, HashMap::new());
        b.push(1, r("a", 0), 0);
        let cut = b.push(2, r("a", 1), 0).unwrap();
        b.push(3, r("a", 2), 5);
        b.put_back(cut, 9);
        assert_eq!(b.take(&StreamName::new("a").unwrap()).map(|c| c.ids), Some(vec![1, 2, 3]));
        assert!(b.take(&StreamName::new("a").unwrap()).is_none());
    }

    #[test]
    fn batches_start_anew_at_cut_times() {
        let a = StreamName::new("a").unwrap();
        let mut b = Batcher::new(Policy { count: 100, interval_ms: None }, HashMap::new());
        for (id, ts) in [(1, 10), (2, 20), (3, 30)] {
            b.push(id, r("a", ts), 0);
        }
        // A time inside the open batch splits it there.
        let cuts = b.cut_at(&a, &[25, 50]);
        assert_eq!(cuts.iter().map(|c| c.ids.clone()).collect::<Vec<_>>(), [vec![1, 2]]);
        assert!(b.watching());
        // A reading before the next time joins the batch; one after it starts a new one.
        assert!(b.at_boundary(&r("a", 40)).is_none());
        b.push(4, r("a", 40), 0);
        assert_eq!(b.at_boundary(&r("a", 50)).map(|c| c.ids), Some(vec![3, 4]));
        assert!(!b.watching());
        b.push(5, r("a", 50), 0);
        assert_eq!(b.flush()[0].ids, [5]);
        // A time no open reading is before cuts nothing.
        b.push(6, r("a", 60), 0);
        assert!(b.cut_at(&a, &[55]).is_empty());
        assert!(b.at_boundary(&r("a", 61)).is_none());
    }

    #[test]
    fn flush_cuts_everything() {
        let mut b = Batcher::new(Policy { count: 100, interval_ms: None }, HashMap::new());
        b.push(1, r("a", 0), 0);
        b.push(2, r("b", 0), 0);
        assert_eq!(b.next_deadline(), None);
        assert_eq!(b.flush().len(), 2);
        assert!(b.flush().is_empty());
    }
}
