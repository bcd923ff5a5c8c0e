//! Auditing a stream as a reader sees it: rows from an untrusted store, the
//! store's checkpoints, and the highest head this reader remembers.
//!
//! Two steps, so the expensive one can run on many cores:
//! 1. [`inspect`] each row on its own: parse, hash, check the signature and
//!    that the row's clear columns agree with the signed header;
//! 2. [`audit`] the inspected rows together: duplicates, reordering, gaps,
//!    chain links, truncation against checkpoints, rollback against memory.
//!
//! Every finding names sequence numbers.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::checkpoint::Checkpoint;
use crate::envelope::{self, Authorship, BatchHash, Header};
use crate::id::{DeviceId, StreamName};

/// A stored row: the clear columns (which the store could have edited) and the sealed bytes.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub seq: u64,
    pub first_ts: i64,
    pub last_ts: i64,
    pub count: i64,
    pub epoch: i64,
    pub hash: &'a [u8],
    pub bytes: &'a [u8],
}

/// A batch that passed the per-row checks.
#[derive(Debug, Clone)]
pub struct Good {
    pub header: Header,
    pub hash: BatchHash,
    pub signed: bool,
}

/// Why a row failed the per-row checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowProblem {
    /// Unparseable, a signature that does not verify, or clear columns that contradict the header.
    Tampered(&'static str),
    /// Validly signed by another identity than the device the header names.
    Foreign(DeviceId),
    /// An authentic batch of another device or stream.
    Moved { device: DeviceId, stream: StreamName, seq: u64 },
}

#[derive(Debug, Clone)]
pub struct Inspected {
    pub row_seq: u64,
    pub verdict: Result<Good, RowProblem>,
}

/// Per-row checks. Independent of other rows, so callers may run them in parallel.
pub fn inspect(device: DeviceId, stream: &StreamName, row: Row<'_>) -> Inspected {
    let verdict = (|| {
        let parsed = envelope::parse(row.bytes).map_err(|_| RowProblem::Tampered("unreadable sealed batch"))?;
        let hash = parsed.hash();
        let signed = match parsed.authorship(&hash) {
            Authorship::Device => true,
            Authorship::Unsigned => false,
            Authorship::BadSignature => {
                return Err(RowProblem::Tampered("signature does not verify"));
            }
            Authorship::Foreign(who) => return Err(RowProblem::Foreign(who)),
        };
        let h = parsed.header;
        if h.device != device || &h.stream != stream {
            return Err(RowProblem::Moved { device: h.device, stream: h.stream, seq: h.seq });
        }
        if h.first_ts != row.first_ts || h.last_ts != row.last_ts {
            return Err(RowProblem::Tampered("clear time columns differ from the signed header"));
        }
        if i64::from(h.count) != row.count {
            return Err(RowProblem::Tampered("clear count column differs from the signed header"));
        }
        if i64::from(h.epoch) != row.epoch {
            return Err(RowProblem::Tampered("clear epoch column differs from the signed header"));
        }
        if row.hash != hash.0 {
            return Err(RowProblem::Tampered("clear hash column differs from the batch's hash"));
        }
        Ok(Good { header: h, hash, signed })
    })();
    Inspected { row_seq: row.seq, verdict }
}

/// A head of a stream: batch `seq` with `hash`, known as of `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: BatchHash,
    pub ts: i64,
}

/// Which part of the stream the rows cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// The rows start at the stream's beginning: missing first batches are a gap.
    pub from_start: bool,
    /// The rows run to the stream's end: a missing tail is truncation or rollback.
    pub to_end: bool,
}

impl Scope {
    pub const WHOLE: Scope = Scope { from_start: true, to_end: true };
}

/// The state of one row after the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Authentic and in place.
    Verified,
    /// Authentic, but stored under another sequence number than its own.
    Reordered,
    /// Not signed and not covered by a later signed batch or checkpoint.
    Unsigned,
    /// Another copy of a batch already seen.
    Duplicate,
    Tampered,
    Foreign,
    Moved,
}

impl Status {
    /// The row's readings are the device's and may be shown.
    pub fn is_authentic(self) -> bool {
        matches!(self, Status::Verified | Status::Reordered)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Verified => "verified",
            Status::Reordered => "reordered",
            Status::Unsigned => "unsigned",
            Status::Duplicate => "duplicate",
            Status::Tampered => "tampered",
            Status::Foreign => "foreign",
            Status::Moved => "moved",
        }
    }
}

/// One problem found, naming sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Tampered {
        row_seq: u64,
        what: &'static str,
    },
    Foreign {
        row_seq: u64,
        signer: DeviceId,
    },
    Moved {
        row_seq: u64,
        device: DeviceId,
        stream: StreamName,
        seq: u64,
    },
    Duplicate {
        seq: u64,
        row_seq: u64,
    },
    Conflict {
        seq: u64,
    },
    Reordered {
        seq: u64,
        row_seq: u64,
    },
    Gap {
        from: u64,
        to: u64,
    },
    ChainBroken {
        seq: u64,
    },
    TruncatedTail {
        last: Option<u64>,
        checkpoint: u64,
    },
    Rollback {
        store_head: Option<u64>,
        seen: u64,
        seen_ts: i64,
    },
    Fork {
        seq: u64,
    },
    BadCheckpoint {
        seq: u64,
    },
    Unsigned {
        seq: u64,
    },
    /// The store's newest checkpoint is older than one this reader saw (or it holds none).
    CheckpointsRemoved {
        seen: u64,
        store: Option<u64>,
    },
    /// The batch just before or after a time range is not in the store, so
    /// the range cannot be shown complete at that edge.
    RangeEdgeMissing {
        seq: u64,
        at_start: bool,
    },
}

impl Finding {
    /// A short machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Tampered { .. } => "tampered",
            Finding::Foreign { .. } => "foreign-signer",
            Finding::Moved { .. } => "moved",
            Finding::Duplicate { .. } => "duplicate",
            Finding::Conflict { .. } => "conflict",
            Finding::Reordered { .. } => "reordered",
            Finding::Gap { .. } => "gap",
            Finding::ChainBroken { .. } => "chain-broken",
            Finding::TruncatedTail { .. } => "truncated",
            Finding::Rollback { .. } => "rollback",
            Finding::Fork { .. } => "fork",
            Finding::BadCheckpoint { .. } => "bad-checkpoint",
            Finding::Unsigned { .. } => "unsigned",
            Finding::RangeEdgeMissing { .. } => "range-edge-missing",
            Finding::CheckpointsRemoved { .. } => "checkpoints-removed",
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Tampered { row_seq, what } => write!(f, "batch {row_seq}: tampered ({what})"),
            Finding::Foreign { row_seq, signer } => {
                write!(f, "batch {row_seq}: signed by a different identity (device {signer}), not by this device")
            }
            Finding::Moved { row_seq, device, stream, seq } => write!(
                f,
                "batch {row_seq}: holds batch {seq} of device {device} stream {stream:?} (moved from another stream or device)"
            ),
            Finding::Duplicate { seq, row_seq } => {
                write!(f, "batch {seq}: appears again as batch {row_seq} (replayed or duplicated)")
            }
            Finding::Conflict { seq } => write!(f, "batch {seq}: two different signed batches claim this number"),
            Finding::Reordered { seq, row_seq } => {
                write!(f, "batch {seq}: stored in the place of batch {row_seq} (reordered)")
            }
            Finding::Gap { from, to } if from == to => write!(f, "batch {from}: missing (gap)"),
            Finding::Gap { from, to } => write!(f, "batches {from}..={to}: missing (gap)"),
            Finding::ChainBroken { seq } => {
                write!(f, "batch {seq}: does not chain to batch {} (its predecessor was replaced)", seq.wrapping_sub(1))
            }
            Finding::TruncatedTail { last, checkpoint } => match last {
                Some(l) => {
                    write!(f, "truncated: the store ends at batch {l} but a signed checkpoint names batch {checkpoint}")
                }
                None => {
                    write!(f, "truncated: the store holds no batch but a signed checkpoint names batch {checkpoint}")
                }
            },
            Finding::Rollback { store_head, seen, seen_ts } => {
                let at = match store_head {
                    Some(h) => format!("ends at batch {h}"),
                    None => "holds no batch".to_string(),
                };
                write!(f, "rollback: the store {at}, but batch {seen} was seen before (at {seen_ts} ms)")
            }
            Finding::Fork { seq } => {
                write!(f, "batch {seq}: differs from the batch {seq} seen before (the store was rolled back or forked)")
            }
            Finding::BadCheckpoint { seq } => {
                write!(f, "checkpoint for batch {seq}: not signed by this device")
            }
            Finding::Unsigned { seq } => write!(f, "batch {seq}: unsigned and not covered by a signed checkpoint"),
            Finding::CheckpointsRemoved { seen, store } => match store {
                Some(s) => write!(
                    f,
                    "checkpoints removed: the store's newest names batch {s}, but one naming batch {seen} was seen before"
                ),
                None => {
                    write!(f, "checkpoints removed: the store holds none, but one naming batch {seen} was seen before")
                }
            },
            Finding::RangeEdgeMissing { seq, at_start } => write!(
                f,
                "batch {seq}: missing, just {} the range (readings at that end of the range may be missing)",
                if *at_start { "before" } else { "after" }
            ),
        }
    }
}

/// The outcome of [`audit`].
#[derive(Debug, Clone)]
pub struct Audit {
    /// One per input row, in input order.
    pub statuses: Vec<Status>,
    pub findings: Vec<Finding>,
    /// The highest authentic head seen (a signed batch or checkpoint), to remember.
    pub head: Option<Head>,
    /// The batch the store's newest valid checkpoint names.
    pub checkpoint: Option<u64>,
}

impl Audit {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Audits inspected rows (in the store's seq order) against checkpoints and memory.
pub fn audit(
    device: DeviceId,
    stream: &StreamName,
    rows: &[Inspected],
    checkpoints: &[&[u8]],
    remembered: Option<Head>,
    scope: Scope,
) -> Audit {
    let mut statuses = vec![Status::Verified; rows.len()];
    let mut findings = Vec::new();
    // Numbers of rows already reported as bad, so they are not reported again as gaps.
    let mut reported: Vec<u64> = Vec::new();
    // seq -> index of the first authentic row carrying it
    let mut by_seq: HashMap<u64, usize> = HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let good = match &r.verdict {
            Ok(g) => g,
            Err(RowProblem::Tampered(what)) => {
                statuses[i] = Status::Tampered;
                reported.push(r.row_seq);
                findings.push(Finding::Tampered { row_seq: r.row_seq, what });
                continue;
            }
            Err(RowProblem::Foreign(signer)) => {
                statuses[i] = Status::Foreign;
                reported.push(r.row_seq);
                findings.push(Finding::Foreign { row_seq: r.row_seq, signer: *signer });
                continue;
            }
            Err(RowProblem::Moved { device, stream, seq }) => {
                statuses[i] = Status::Moved;
                reported.push(r.row_seq);
                findings.push(Finding::Moved {
                    row_seq: r.row_seq,
                    device: *device,
                    stream: stream.clone(),
                    seq: *seq,
                });
                continue;
            }
        };
        let seq = good.header.seq;
        if let Some(&first) = by_seq.get(&seq) {
            statuses[i] = Status::Duplicate;
            let same = matches!(&rows[first].verdict, Ok(g) if g.hash == good.hash);
            findings.push(if same {
                Finding::Duplicate { seq, row_seq: r.row_seq }
            } else {
                Finding::Conflict { seq }
            });
            continue;
        }
        by_seq.insert(seq, i);
        if r.row_seq != seq {
            statuses[i] = Status::Reordered;
            findings.push(Finding::Reordered { seq, row_seq: r.row_seq });
        }
    }

    let good = |i: usize| match &rows[i].verdict {
        Ok(g) => g,
        Err(_) => unreachable!("only authentic rows are indexed"),
    };
    let mut order: Vec<u64> = by_seq.keys().copied().collect();
    order.sort_unstable();

    // What signed batches vouch for (covers, format v2): batches whose hash
    // they name, and batches that differ from the hash they name (altered or
    // replaced; reported as such, not as a broken link after them).
    let mut vouched: HashSet<u64> = HashSet::new();
    let mut contradicted: HashSet<u64> = HashSet::new();
    for &seq in &order {
        let g = good(by_seq[&seq]);
        if !g.signed {
            continue;
        }
        for back in 1..=g.header.covers.len() as u64 {
            let s = seq - back;
            if let (Some(h), Some(&i)) = (g.header.covered(s), by_seq.get(&s)) {
                if good(i).hash == *h {
                    vouched.insert(s);
                } else if !good(i).signed {
                    contradicted.insert(s);
                }
            }
        }
    }

    // Gaps and chain links, in sequence order.
    if scope.from_start
        && let Some(&first) = order.first()
        && first > 0
    {
        push_gap(&mut findings, &reported, 0, first - 1);
    }
    for w in order.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b != a + 1 {
            push_gap(&mut findings, &reported, a + 1, b - 1);
        } else if good(by_seq[&b]).header.prev != good(by_seq[&a]).hash && !contradicted.contains(&a) {
            findings.push(Finding::ChainBroken { seq: b });
        }
    }

    // Checkpoints from the store.
    let mut best_cp: Option<Checkpoint> = None;
    for bytes in checkpoints {
        match Checkpoint::parse(bytes) {
            Ok((cp, Authorship::Device)) if cp.device == device && &cp.stream == stream => {
                if best_cp.as_ref().is_none_or(|b| cp.seq > b.seq) {
                    best_cp = Some(cp);
                }
            }
            Ok((cp, _)) => findings.push(Finding::BadCheckpoint { seq: cp.seq }),
            Err(_) => findings.push(Finding::BadCheckpoint { seq: 0 }),
        }
    }

    // Unsigned batches count only when a signed batch vouches for their hash
    // (its covers, format v2), or a signed batch or checkpoint covers them
    // through the chain. Covers make each batch authentic on its own, so a
    // lost or altered neighbour costs only itself.
    let mut covered = false;
    for (k, &seq) in order.iter().enumerate().rev() {
        let g = good(by_seq[&seq]);
        let linked = order.get(k + 1).is_some_and(|&next| next == seq + 1 && good(by_seq[&next]).header.prev == g.hash);
        covered = if order.get(k + 1).is_none() {
            best_cp.as_ref().is_some_and(|cp| cp.seq == seq && cp.head == g.hash)
        } else {
            covered && linked
        };
        covered |= g.signed || vouched.contains(&seq);
        if contradicted.contains(&seq) {
            statuses[by_seq[&seq]] = Status::Tampered;
            findings.push(Finding::Tampered { row_seq: seq, what: "differs from the hash a signed batch vouches for" });
            covered = false;
        } else if !covered {
            statuses[by_seq[&seq]] = Status::Unsigned;
            findings.push(Finding::Unsigned { seq });
        }
    }

    let last = order.last().copied();
    let hash_at = |seq: u64| by_seq.get(&seq).map(|&i| good(i).hash);
    if let Some(cp) = &best_cp {
        if hash_at(cp.seq).is_some_and(|h| h != cp.head) {
            findings.push(Finding::Fork { seq: cp.seq });
        }
        if scope.to_end && last.is_none_or(|l| l < cp.seq) {
            findings.push(Finding::TruncatedTail { last, checkpoint: cp.seq });
        }
    }
    if let Some(k) = remembered {
        if hash_at(k.seq).is_some_and(|h| h != k.hash) {
            findings.push(Finding::Fork { seq: k.seq });
        }
        let store_knows = last.max(best_cp.as_ref().map(|c| c.seq));
        if scope.to_end && store_knows.is_none_or(|s| s < k.seq) {
            findings.push(Finding::Rollback { store_head: last, seen: k.seq, seen_ts: k.ts });
        }
    }

    // The highest authentic head: a signed batch or a device checkpoint.
    let mut head = order.iter().rev().map(|&s| good(by_seq[&s])).find(|g| g.signed).map(|g| Head {
        seq: g.header.seq,
        hash: g.hash,
        ts: g.header.last_ts,
    });
    if let Some(cp) = &best_cp
        && head.is_none_or(|h| cp.seq > h.seq)
    {
        head = Some(Head { seq: cp.seq, hash: cp.head, ts: cp.ts });
    }
    let checkpoint = best_cp.as_ref().map(|c| c.seq);
    Audit { statuses, findings, head, checkpoint }
}

/// Reports `from..=to` as missing, less the numbers already reported as bad rows.
fn push_gap(findings: &mut Vec<Finding>, reported: &[u64], from: u64, to: u64) {
    let mut inside: Vec<u64> = reported.iter().copied().filter(|s| (from..=to).contains(s)).collect();
    inside.sort_unstable();
    inside.dedup();
    let mut start = from;
    for s in inside {
        if s > start {
            findings.push(Finding::Gap { from: start, to: s - 1 });
        }
        start = s + 1;
    }
    if start <= to {
        findings.push(Finding::Gap { from: start, to });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{SealParams, seal};
    use crate::keys::Identity;
    use crate::reading::{Readings, ScalarBatch};

    struct Fixture {
        id: Identity,
        stream: StreamName,
        batches: Vec<Vec<u8>>,
        heads: Vec<Head>,
    }

    fn fixture(n: u64) -> Fixture {
        let id = Identity::from_secret_bytes(&[1; 96]);
        let stream = StreamName::new("temperature").unwrap();
        let key = id.epoch_key(&stream, 0);
        let mut prev = BatchHash::default();
        let mut batches = Vec::new();
        let mut heads = Vec::new();
        for seq in 0..n {
            let r = Readings::Scalar(ScalarBatch {
                unit: "°C".into(),
                ts: vec![seq as i64 * 10, seq as i64 * 10 + 5],
                values: vec![20.0, 20.1],
                labels: vec![],
            });
            let p = SealParams {
                device: id.device_id(),
                stream: stream.clone(),
                seq,
                epoch: 0,
                prev,
                salt: [seq as u8; 16],
                covers: Vec::new(),
            };
            let s = seal(&r, &p, &key, Some(&id), &mut Vec::new()).unwrap();
            prev = s.hash;
            heads.push(Head { seq, hash: s.hash, ts: seq as i64 * 10 + 5 });
            batches.push(s.bytes);
        }
        Fixture { id, stream, batches, heads }
    }

    /// The row a store that edits nothing would hold for `bytes` (`hash` receives the hash column).
    fn honest_row<'a>(seq: u64, bytes: &'a [u8], hash: &'a mut [u8; 32]) -> Row<'a> {
        let (f, l, c, e) = envelope::parse(bytes)
            .map(|p| {
                *hash = p.hash().0;
                (p.header.first_ts, p.header.last_ts, p.header.count, p.header.epoch)
            })
            .unwrap_or_default();
        Row { seq, first_ts: f, last_ts: l, count: c.into(), epoch: e.into(), hash: &hash[..], bytes }
    }

    #[test]
    fn every_clear_column_is_checked_against_the_signed_header() {
        let fx = fixture(1);
        let b = &fx.batches[0];
        let mut hash = [0u8; 32];
        let honest = honest_row(0, b, &mut hash);
        assert!(inspect(fx.id.device_id(), &fx.stream, honest).verdict.is_ok());
        let other_hash = [7u8; 32];
        let edits: [(&str, Row<'_>); 5] = [
            ("time", Row { first_ts: honest.first_ts - 1, ..honest }),
            ("time", Row { last_ts: honest.last_ts + 1, ..honest }),
            ("count", Row { count: honest.count + 1, ..honest }),
            ("epoch", Row { epoch: honest.epoch + 1, ..honest }),
            ("hash", Row { hash: &other_hash, ..honest }),
        ];
        for (what, row) in edits {
            match inspect(fx.id.device_id(), &fx.stream, row).verdict {
                Err(RowProblem::Tampered(why)) => assert!(why.contains(what), "{what}: {why}"),
                other => panic!("an edited {what} column went unnoticed: {other:?}"),
            }
        }
    }

    impl Fixture {
        fn rows(&self) -> Vec<(u64, Vec<u8>)> {
            self.batches.iter().enumerate().map(|(i, b)| (i as u64, b.clone())).collect()
        }

        fn run(&self, rows: &[(u64, Vec<u8>)], cps: &[Vec<u8>], remembered: Option<Head>) -> Audit {
            let inspected: Vec<Inspected> = rows
                .iter()
                .map(|(seq, b)| inspect(self.id.device_id(), &self.stream, honest_row(*seq, b, &mut [0; 32])))
                .collect();
            let cps: Vec<&[u8]> = cps.iter().map(|c| c.as_slice()).collect();
            audit(self.id.device_id(), &self.stream, &inspected, &cps, remembered, Scope::WHOLE)
        }

        fn checkpoint(&self, seq: u64) -> Vec<u8> {
            Checkpoint {
                device: self.id.device_id(),
                stream: self.stream.clone(),
                seq,
                head: self.heads[seq as usize].hash,
                ts: 99,
            }
            .sign(&self.id)
            .unwrap()
        }
    }

    fn kinds(a: &Audit) -> Vec<&'static str> {
        a.findings.iter().map(Finding::kind).collect()
    }

    #[test]
    fn clean_chain() {
        let f = fixture(5);
        let a = f.run(&f.rows(), &[f.checkpoint(4)], Some(f.heads[3]));
        assert!(a.is_clean(), "{:?}", a.findings);
        assert_eq!(a.head.unwrap().seq, 4);
        assert!(a.statuses.iter().all(|s| *s == Status::Verified));
    }

    #[test]
    fn each_attack_is_named() {
        let f = fixture(6);
        // modified byte
        let mut rows = f.rows();
        let n = rows[2].1.len();
        rows[2].1[n / 2] ^= 1;
        assert_eq!(kinds(&f.run(&rows, &[], None)), ["tampered"]);
        // duplicate (replay) under another number
        let mut rows = f.rows();
        rows.push((6, f.batches[1].clone()));
        assert_eq!(kinds(&f.run(&rows, &[], None)), ["duplicate"]);
        // reordered
        let mut rows = f.rows();
        rows[2].1 = f.batches[3].clone();
        rows[3].1 = f.batches[2].clone();
        assert_eq!(kinds(&f.run(&rows, &[], None)), ["reordered", "reordered"]);
        // gap
        let mut rows = f.rows();
        rows.remove(3);
        let a = f.run(&rows, &[], None);
        assert_eq!(a.findings, [Finding::Gap { from: 3, to: 3 }]);
        // truncated tail against the store's checkpoint
        let mut rows = f.rows();
        rows.truncate(4);
        let a = f.run(&rows, &[f.checkpoint(5)], None);
        assert_eq!(a.findings, [Finding::TruncatedTail { last: Some(3), checkpoint: 5 }]);
        // rollback: store and checkpoints older than what this reader saw
        let a = f.run(&rows, &[f.checkpoint(3)], Some(f.heads[5]));
        assert_eq!(kinds(&a), ["rollback"]);
        assert_eq!(a.head.unwrap().seq, 3);
    }

    #[test]
    fn moved_and_foreign() {
        let f = fixture(3);
        let other = fixture_for(2, "humidity");
        let mut rows = f.rows();
        rows.push((3, other.batches[0].clone()));
        let a = f.run(&rows, &[], None);
        assert_eq!(kinds(&a), ["moved"]);
        let text = a.findings[0].to_string();
        assert!(text.contains("humidity") && text.contains("batch 3"), "{text}");
    }

    fn fixture_for(seed: u8, stream: &str) -> Fixture {
        let mut f = fixture(1);
        f.id = Identity::from_secret_bytes(&[seed; 96]);
        f.stream = StreamName::new(stream).unwrap();
        let key = f.id.epoch_key(&f.stream, 0);
        let r = Readings::Scalar(ScalarBatch { unit: "%".into(), ts: vec![1], values: vec![1.0], labels: vec![] });
        let p = SealParams {
            device: f.id.device_id(),
            stream: f.stream.clone(),
            seq: 0,
            epoch: 0,
            prev: BatchHash::default(),
            salt: [0; 16],
            covers: Vec::new(),
        };
        f.batches = vec![seal(&r, &p, &key, Some(&f.id), &mut Vec::new()).unwrap().bytes];
        f
    }

    /// Two rounds of four batches, each ended by a signed batch that covers
    /// the `back` batches before it.
    fn rounds(back: usize) -> Fixture {
        let id = Identity::from_secret_bytes(&[1; 96]);
        let stream = StreamName::new("temperature").unwrap();
        let key = id.epoch_key(&stream, 0);
        let (mut prev, mut batches, mut heads, mut hashes) = (BatchHash::default(), Vec::new(), Vec::new(), Vec::new());
        for seq in 0..8u64 {
            let r = Readings::Scalar(ScalarBatch {
                unit: "°C".into(),
                ts: vec![seq as i64 * 10],
                values: vec![20.0],
                labels: vec![],
            });
            let signed = seq % 4 == 3;
            let covers = if signed { hashes[hashes.len().saturating_sub(back)..].to_vec() } else { Vec::new() };
            let p = SealParams {
                device: id.device_id(),
                stream: stream.clone(),
                seq,
                epoch: 0,
                prev,
                salt: [9; 16],
                covers,
            };
            let s = seal(&r, &p, &key, signed.then_some(&id), &mut Vec::new()).unwrap();
            prev = s.hash;
            hashes.push(s.hash);
            heads.push(Head { seq, hash: s.hash, ts: seq as i64 * 10 });
            batches.push(s.bytes);
        }
        Fixture { id, stream, batches, heads }
    }

    #[test]
    fn damage_stays_local_when_signed_batches_cover_their_round() {
        let verified = |a: &Audit| -> Vec<usize> {
            a.statuses.iter().enumerate().filter(|(_, s)| s.is_authentic()).map(|(i, _)| i).collect()
        };
        // Covers of the round only: a deleted batch costs itself.
        let f = rounds(3);
        let mut rows = f.rows();
        rows.remove(1);
        let a = f.run(&rows, &[], None);
        assert_eq!(a.findings, [Finding::Gap { from: 1, to: 1 }]);
        assert_eq!(verified(&a).len(), 7);
        // An altered batch costs itself.
        let mut rows = f.rows();
        let n = rows[5].1.len();
        rows[5].1[n - 3] ^= 1;
        let a = f.run(&rows, &[], None);
        assert_eq!(kinds(&a), ["tampered"]);
        assert_eq!(verified(&a), [0, 1, 2, 3, 4, 6, 7]);
        // A batch replaced by an unsigned one that chains on (a forgery by a holder of the key): it alone is refused.
        let r = Readings::Scalar(ScalarBatch { unit: "°C".into(), ts: vec![11], values: vec![99.0], labels: vec![] });
        let prev = envelope::parse(&f.batches[0]).unwrap().hash();
        let p = SealParams {
            device: f.id.device_id(),
            stream: f.stream.clone(),
            seq: 1,
            epoch: 0,
            prev,
            salt: [1; 16],
            covers: Vec::new(),
        };
        let forged = seal(&r, &p, &f.id.epoch_key(&f.stream, 0), None, &mut Vec::new()).unwrap();
        let mut rows = f.rows();
        rows[1].1 = forged.bytes;
        let a = f.run(&rows, &[], None);
        assert_eq!(kinds(&a), ["tampered"]);
        assert_eq!(verified(&a), [0, 2, 3, 4, 5, 6, 7]);
        // Without covers (format v1), the same loss withholds the round's earlier batch.
        let old = rounds(0);
        let mut rows = old.rows();
        rows.remove(1);
        let a = old.run(&rows, &[], None);
        assert_eq!(kinds(&a), ["gap", "unsigned"]);
        // Covers of the previous round too: losing a round's signed batch costs only itself.
        let f = rounds(7);
        let mut rows = f.rows();
        rows.remove(3);
        let a = f.run(&rows, &[], None);
        assert_eq!(a.findings, [Finding::Gap { from: 3, to: 3 }]);
        assert_eq!(verified(&a).len(), 7);
    }

    #[test]
    fn unsigned_batches_need_cover() {
        let f = fixture(1);
        let key = f.id.epoch_key(&f.stream, 0);
        let r = Readings::Scalar(ScalarBatch { unit: "".into(), ts: vec![100], values: vec![1.0], labels: vec![] });
        let p = SealParams {
            device: f.id.device_id(),
            stream: f.stream.clone(),
            seq: 1,
            epoch: 0,
            prev: f.heads[0].hash,
            salt: [7; 16],
            covers: Vec::new(),
        };
        let unsigned = seal(&r, &p, &key, None, &mut Vec::new()).unwrap();
        let mut rows = f.rows();
        rows.push((1, unsigned.bytes.clone()));
        assert_eq!(kinds(&f.run(&rows, &[], None)), ["unsigned"]);
        let cp = Checkpoint { device: f.id.device_id(), stream: f.stream.clone(), seq: 1, head: unsigned.hash, ts: 1 }
            .sign(&f.id)
            .unwrap();
        assert!(f.run(&rows, &[cp], None).is_clean());
    }
}
