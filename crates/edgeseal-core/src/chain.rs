//! Auditing a stream as a reader sees it: rows from an untrusted store, the
//! store's checkpoints, and the highest head this reader remembers.
//!
//! Two steps, so the expensive one can run on many cores:
//! 1. [`inspect`] each row on its own: parse, hash, check the signature and
//!    that the row's clear columns agree with the signed header;
//! 2. feed the inspected rows, in the store's order, to an [`Auditor`]:
//!    duplicates, reordering, gaps, chain links, truncation against
//!    checkpoints, what a retention record removed, rollback against memory.
//!    It holds compact state for a bounded window of batches, so a reader
//!    streams a stream of any length; [`audit`] does it all at once.
//!
//! Every finding names sequence numbers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use crate::checkpoint::Checkpoint;
use crate::envelope::{self, Authorship, BatchHash, Header};
use crate::id::{DeviceId, StreamName};
use crate::retention::Retention;

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
    /// A retention record in the store that is not the device's.
    BadRetention {
        from: u64,
    },
    /// Batch `seq` does not chain to the retention record where the stream starts.
    RetentionMismatch {
        seq: u64,
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
            Finding::BadRetention { .. } => "bad-retention",
            Finding::RetentionMismatch { .. } => "retention-mismatch",
        }
    }

    /// Where it sorts in a list: by the batch number it names (where it was
    /// found), then what concerns the stream as a whole.
    pub fn order(&self) -> (u8, u64) {
        match self {
            Finding::Tampered { row_seq, .. }
            | Finding::Foreign { row_seq, .. }
            | Finding::Moved { row_seq, .. }
            | Finding::Duplicate { row_seq, .. }
            | Finding::Reordered { row_seq, .. } => (0, *row_seq),
            Finding::Conflict { seq }
            | Finding::ChainBroken { seq }
            | Finding::Fork { seq }
            | Finding::Unsigned { seq }
            | Finding::RangeEdgeMissing { seq, .. }
            | Finding::RetentionMismatch { seq } => (0, *seq),
            Finding::Gap { from, .. } => (0, *from),
            Finding::TruncatedTail { .. }
            | Finding::Rollback { .. }
            | Finding::BadCheckpoint { .. }
            | Finding::BadRetention { .. }
            | Finding::CheckpointsRemoved { .. } => (1, 0),
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
                    write!(
                        f,
                        "truncated: the store ends at batch {l} but a signed checkpoint or retention record names batch {checkpoint}"
                    )
                }
                None => {
                    write!(
                        f,
                        "truncated: the store holds no batch but a signed checkpoint or retention record names batch {checkpoint}"
                    )
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
            Finding::BadRetention { from } => {
                write!(f, "retention record from batch {from}: not signed by this device")
            }
            Finding::RetentionMismatch { seq } => {
                write!(f, "batch {seq}: does not chain to the signed retention record that starts the stream there")
            }
            Finding::RangeEdgeMissing { seq, at_start } => write!(
                f,
                "batch {seq}: missing, just {} the range (readings at that end of the range may be missing)",
                if *at_start { "before" } else { "after" }
            ),
        }
    }
}

/// How far from its place (in batch numbers) a batch may be stored and still
/// be told apart from a gap, and how long an unsigned batch waits for a
/// signed one to vouch for it (the format's bound on `covers`). It bounds
/// what a reader holds: an audit keeps compact state for at most about this
/// many batches, however long the stream.
pub const WINDOW: u64 = crate::envelope::MAX_COVERS as u64;

/// The outcome of an audit.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// The status of each input row, in input order (those not already taken
    /// with [`Auditor::settled`]).
    pub statuses: Vec<Status>,
    /// What was wrong, in the order of the batch numbers they name (those of
    /// the stream as a whole last).
    pub findings: Vec<Finding>,
    /// The highest authentic head seen (a signed batch or checkpoint), to remember.
    pub head: Option<Head>,
    /// The batch the store's newest valid checkpoint names.
    pub checkpoint: Option<u64>,
    /// Where the stream starts by the store's newest valid retention record (0 without one).
    pub start: u64,
    /// Rows read, and how many of them are authentic.
    pub rows: u64,
    pub authentic: u64,
}

impl Audit {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Audits inspected rows (in the store's seq order) against checkpoints,
/// retention records and memory, all at once.
pub fn audit(
    device: DeviceId,
    stream: &StreamName,
    rows: &[Inspected],
    checkpoints: &[&[u8]],
    remembered: Option<Head>,
    scope: Scope,
) -> Audit {
    let mut a = Auditor::new(device, stream, checkpoints, &[], remembered, scope);
    for r in rows {
        a.push(r.clone());
    }
    a.finish()
}

/// Of the store's checkpoints and retention records, the newest valid one of
/// each; the others, if not the device's, are findings.
fn records(
    device: DeviceId,
    stream: &StreamName,
    checkpoints: &[&[u8]],
    retentions: &[&[u8]],
) -> (Option<Checkpoint>, Option<Retention>, Vec<Finding>) {
    let mut findings = Vec::new();
    let mut checkpoint: Option<Checkpoint> = None;
    for bytes in checkpoints {
        match Checkpoint::parse(bytes) {
            Ok((cp, Authorship::Device)) if cp.device == device && &cp.stream == stream => {
                if checkpoint.as_ref().is_none_or(|b| cp.seq > b.seq) {
                    checkpoint = Some(cp);
                }
            }
            Ok((cp, _)) => findings.push(Finding::BadCheckpoint { seq: cp.seq }),
            Err(_) => findings.push(Finding::BadCheckpoint { seq: 0 }),
        }
    }
    let mut retention: Option<Retention> = None;
    for bytes in retentions {
        match Retention::parse(bytes) {
            Ok((r, Authorship::Device)) if r.device == device && &r.stream == stream => {
                if retention.as_ref().is_none_or(|b| r.from > b.from) {
                    retention = Some(r);
                }
            }
            Ok((r, _)) => findings.push(Finding::BadRetention { from: r.from }),
            Err(_) => findings.push(Finding::BadRetention { from: 0 }),
        }
    }
    (checkpoint, retention, findings)
}

/// A batch that passed the per-row checks, waiting to be taken in sequence order.
#[derive(Debug)]
struct Item {
    seq: u64,
    hash: BatchHash,
    prev: BatchHash,
    signed: bool,
    /// Its input row, and its status once authentic (verified, or reordered when stored elsewhere).
    index: u64,
    status: Status,
}

/// An unsigned batch taken in order and not covered yet.
#[derive(Debug)]
struct Pending {
    hash: BatchHash,
    index: u64,
    status: Status,
    /// The batch before it is pending too and chains to it: covering this one covers that one.
    linked_down: bool,
}

/// An audit that reads a stream row by row, in the store's order, holding
/// compact state for about [`WINDOW`] batches whatever the stream's length.
///
/// Each row's status is known as soon as nothing later can change it: a
/// signed batch at once, an unsigned one when a signed batch (or checkpoint)
/// covers it through the chain or names its hash, or when it is [`WINDOW`]
/// batches behind without. [`Auditor::settled`] gives the statuses in input
/// order as far as they are known, so a reader shows rows as it goes.
///
/// Findings are those of reading the whole stream at once, except for a
/// batch stored more than [`WINDOW`] places from its own: it is named where
/// it is found (reordered, duplicate) and its own place as a gap.
#[derive(Debug)]
pub struct Auditor {
    scope: Scope,
    start: u64,
    retention: Option<Retention>,
    checkpoint: Option<Checkpoint>,
    remembered: Option<Head>,
    findings: Vec<Finding>,
    /// Statuses of input rows from `base` on; `None` while not known.
    statuses: VecDeque<Option<Status>>,
    base: u64,
    rows: u64,
    authentic: u64,
    /// Authentic batches not yet taken in order, by number.
    window: BTreeMap<u64, Item>,
    /// The next batch number to take in order (`None` before the first batch).
    next: Option<u64>,
    /// The last batch taken: its number and hash.
    last: Option<(u64, BatchHash)>,
    /// The highest row number read (rows arrive in the store's order), and
    /// whether any batch was found in its own place (the order can start).
    max_row: u64,
    in_place: bool,
    /// The first row's number: a stream read from its start begins there at the latest.
    first_row: Option<u64>,
    /// The highest batch number of an authentic batch seen.
    max_item: Option<u64>,
    /// Where a run of missing numbers began.
    gap_from: Option<u64>,
    pending: BTreeMap<u64, Pending>,
    /// A chain broken between a pending batch and the next: reported when the
    /// pending one settles, unless it turned out replaced.
    breaks: BTreeMap<u64, u64>,
    /// Hashes that signed batches name for numbers not taken yet.
    expected: BTreeMap<u64, BatchHash>,
    /// Batches taken in the last [`WINDOW`] numbers: hash and whether signed.
    recent: BTreeMap<u64, (BatchHash, bool)>,
    /// Numbers of bad rows, so they are not reported again as gaps.
    reported: BTreeSet<u64>,
    /// Batches taken in order that a signed batch showed to be replaced (of the last [`WINDOW`]).
    replaced: BTreeSet<u64>,
    head: Option<Head>,
    at_checkpoint: Option<BatchHash>,
    at_remembered: Option<BatchHash>,
}

impl Auditor {
    /// Starts an audit of `device`'s `stream` from the store's checkpoints and
    /// retention records (the newest valid one of each counts; the others must
    /// at least be the device's) and the newest head this reader remembers.
    pub fn new(
        device: DeviceId,
        stream: &StreamName,
        checkpoints: &[&[u8]],
        retentions: &[&[u8]],
        remembered: Option<Head>,
        scope: Scope,
    ) -> Auditor {
        let (checkpoint, retention, findings) = records(device, stream, checkpoints, retentions);
        let start = retention.as_ref().map_or(0, |r| r.from);
        Auditor {
            scope,
            start,
            retention,
            checkpoint,
            remembered,
            findings,
            statuses: VecDeque::new(),
            base: 0,
            rows: 0,
            authentic: 0,
            window: BTreeMap::new(),
            next: None,
            last: None,
            max_row: 0,
            in_place: false,
            first_row: None,
            max_item: None,
            gap_from: None,
            pending: BTreeMap::new(),
            breaks: BTreeMap::new(),
            expected: BTreeMap::new(),
            recent: BTreeMap::new(),
            reported: BTreeSet::new(),
            replaced: BTreeSet::new(),
            head: None,
            at_checkpoint: None,
            at_remembered: None,
        }
    }

    /// Where the stream starts by the newest valid retention record (0 without one).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Takes the next row, in the store's order.
    pub fn push(&mut self, row: Inspected) {
        let index = self.rows;
        self.rows += 1;
        self.statuses.push_back(None);
        self.max_row = self.max_row.max(row.row_seq);
        self.first_row.get_or_insert(row.row_seq);
        let problem = |r: &mut Self, status: Status, finding: Finding| {
            r.reported.insert(row.row_seq);
            r.findings.push(finding);
            r.settle(index, status);
        };
        match row.verdict {
            Err(RowProblem::Tampered(what)) => {
                problem(self, Status::Tampered, Finding::Tampered { row_seq: row.row_seq, what })
            }
            Err(RowProblem::Foreign(signer)) => {
                problem(self, Status::Foreign, Finding::Foreign { row_seq: row.row_seq, signer })
            }
            Err(RowProblem::Moved { device, stream, seq }) => {
                problem(self, Status::Moved, Finding::Moved { row_seq: row.row_seq, device, stream, seq })
            }
            Ok(g) => self.take(row.row_seq, index, g),
        }
        self.advance(false);
    }

    /// An authentic batch found in row `row_seq`.
    fn take(&mut self, row_seq: u64, index: u64, g: Good) {
        let seq = g.header.seq;
        let known = self.window.get(&seq).map(|i| i.hash).or_else(|| self.recent.get(&seq).map(|r| r.0));
        if let Some(first) = known {
            self.findings.push(if first == g.hash {
                Finding::Duplicate { seq, row_seq }
            } else {
                Finding::Conflict { seq }
            });
            return self.settle(index, Status::Duplicate);
        }
        if self.next.is_some_and(|n| seq < n) {
            return self.late(row_seq, index, &g);
        }
        if seq > row_seq.saturating_add(WINDOW) {
            // Stored far before its place: holding it (and every row after it) until the order
            // gets there is what a reader must not do. Named here; its place will be a gap.
            return self.astray(row_seq, index, &g);
        }
        let status = if row_seq != seq {
            self.findings.push(Finding::Reordered { seq, row_seq });
            Status::Reordered
        } else {
            Status::Verified
        };
        self.seen(&g);
        if g.signed {
            self.settle(index, status);
            for back in 1..=g.header.covers.len() as u64 {
                let s = seq - back;
                if let Some(h) = g.header.covered(s) {
                    self.cover(s, *h);
                }
            }
        }
        self.in_place |= row_seq == seq;
        self.window.insert(seq, Item { seq, hash: g.hash, prev: g.header.prev, signed: g.signed, index, status });
    }

    /// Notes what an authentic batch (its first copy) tells about the stream as a whole.
    fn seen(&mut self, g: &Good) {
        let seq = g.header.seq;
        self.max_item = self.max_item.max(Some(seq));
        if g.signed && self.head.is_none_or(|h| seq > h.seq) {
            self.head = Some(Head { seq, hash: g.hash, ts: g.header.last_ts });
        }
        if self.checkpoint.as_ref().is_some_and(|c| c.seq == seq) {
            self.at_checkpoint = Some(g.hash);
        }
        if self.remembered.is_some_and(|k| k.seq == seq) {
            self.at_remembered = Some(g.hash);
        }
    }

    /// A batch whose number was passed already: stored more than [`WINDOW`]
    /// places from its own, whose place is already a gap or a batch.
    fn late(&mut self, row_seq: u64, index: u64, g: &Good) {
        let seq = g.header.seq;
        let in_gap =
            self.findings.iter().any(|f| matches!(f, Finding::Gap { from, to } if (*from..=*to).contains(&seq)));
        if !in_gap {
            // Its first copy is too far back to compare; a copy either way.
            self.findings.push(Finding::Duplicate { seq, row_seq });
            return self.settle(index, Status::Duplicate);
        }
        self.astray(row_seq, index, g);
    }

    /// A batch more than [`WINDOW`] places from its own, taken where it is: a
    /// signed one is authentic on its own; an unsigned one cannot be shown so.
    fn astray(&mut self, row_seq: u64, index: u64, g: &Good) {
        let seq = g.header.seq;
        self.seen(g);
        self.findings.push(Finding::Reordered { seq, row_seq });
        if g.signed {
            self.settle(index, Status::Reordered);
        } else {
            self.findings.push(Finding::Unsigned { seq });
            self.settle(index, Status::Unsigned);
        }
    }

    /// A signed batch names `hash` for batch `seq`.
    fn cover(&mut self, seq: u64, hash: BatchHash) {
        if self.next.is_none_or(|n| seq >= n) {
            self.expected.entry(seq).or_insert(hash);
        } else if let Some(p) = self.pending.get(&seq) {
            if p.hash == hash { self.cover_down(seq) } else { self.replaced(seq) }
        } else if !self.replaced.contains(&seq)
            && self.recent.get(&seq).is_some_and(|(h, signed)| *h != hash && !signed)
        {
            // Covered already through the chain, yet a signed batch names another: the device forked.
            self.findings.push(Finding::Conflict { seq });
        }
    }

    /// Batch `seq` is covered: it and the pending batches chained below it are authentic.
    fn cover_down(&mut self, mut seq: u64) {
        while let Some(p) = self.pending.remove(&seq) {
            self.settle(p.index, p.status);
            if let Some(b) = self.breaks.remove(&seq) {
                self.findings.push(Finding::ChainBroken { seq: b });
            }
            if !p.linked_down || seq == 0 {
                break;
            }
            seq -= 1;
        }
    }

    /// Pending batch `seq` differs from the hash a signed batch names for it.
    fn replaced(&mut self, seq: u64) {
        if let Some(p) = self.pending.remove(&seq) {
            self.breaks.remove(&seq);
            // Not a batch of the chain: no broken link is reported after it.
            self.replaced.insert(seq);
            self.findings
                .push(Finding::Tampered { row_seq: seq, what: "differs from the hash a signed batch vouches for" });
            self.settle(p.index, Status::Tampered);
        }
    }

    fn settle(&mut self, index: u64, status: Status) {
        if let Some(slot) = index.checked_sub(self.base).and_then(|i| self.statuses.get_mut(i as usize)) {
            *slot = Some(status);
        }
        if status.is_authentic() {
            self.authentic += 1;
        }
    }

    /// Takes the batches in order as far as they are known, closing the
    /// numbers no row can fill any more as gaps (all of them when `finishing`).
    fn advance(&mut self, finishing: bool) {
        if self.next.is_none() {
            // The order starts at the lowest batch once one is in its place: a
            // batch stored before its place may still come.
            let Some(&lo) = self.window.keys().next() else { return };
            if !(finishing || self.in_place || self.max_row >= lo.saturating_add(WINDOW)) {
                return;
            }
            let first_row = self.first_row.unwrap_or(lo);
            self.next = Some(if self.scope.from_start { lo.min(self.start).min(first_row) } else { lo });
        }
        while let Some(n) = self.next {
            if let Some(item) = self.window.remove(&n) {
                self.take_in_order(item);
                self.next = n.checked_add(1);
                continue;
            }
            // Batch `n` is missing so far. Nothing after it yet: a tail, not a gap.
            let Some(&k) = self.window.keys().next() else { break };
            // Numbers up to `closed` can no longer be filled: rows come in order, and a batch is
            // stored at most WINDOW places from its own.
            let closed = if finishing { Some(u64::MAX) } else { self.max_row.checked_sub(WINDOW) };
            let Some(closed) = closed.filter(|&c| n <= c) else { break };
            self.gap_from.get_or_insert(n);
            self.next = Some(k.min(closed.saturating_add(1)));
        }
        let Some(next) = self.next else { return };
        let horizon = next.saturating_sub(WINDOW);
        while let Some((&seq, _)) = self.pending.first_key_value().filter(|(s, _)| finishing || **s < horizon) {
            self.uncovered(seq);
        }
        self.recent = self.recent.split_off(&horizon);
        self.replaced = self.replaced.split_off(&horizon);
        self.reported = self.reported.split_off(&self.gap_from.unwrap_or(next).min(horizon));
        self.expected = self.expected.split_off(&next);
    }

    /// Pending batch `seq` was never covered.
    fn uncovered(&mut self, seq: u64) {
        if let Some(p) = self.pending.remove(&seq) {
            self.findings.push(Finding::Unsigned { seq });
            if let Some(b) = self.breaks.remove(&seq) {
                self.findings.push(Finding::ChainBroken { seq: b });
            }
            self.settle(p.index, Status::Unsigned);
        }
    }

    /// Batch `item.seq`, the next in order: gaps before it, its link to the one before.
    fn take_in_order(&mut self, item: Item) {
        let seq = item.seq;
        if let Some(from) = self.gap_from.take() {
            self.gap(from, seq - 1);
        }
        let linked = self.last.is_some_and(|(s, h)| s.checked_add(1) == Some(seq) && h == item.prev);
        if let Some((a, _)) = self.last.filter(|(s, _)| s.checked_add(1) == Some(seq))
            && !linked
        {
            if self.pending.contains_key(&a) {
                self.breaks.insert(a, seq);
            } else if self.recent.contains_key(&a) && !self.replaced.contains(&a) {
                self.findings.push(Finding::ChainBroken { seq });
            }
        }
        if let Some(r) = &self.retention {
            let mismatch =
                (r.from == seq && item.prev != r.head) || (r.from.checked_sub(1) == Some(seq) && item.hash != r.head);
            if mismatch {
                self.findings.push(Finding::RetentionMismatch { seq });
            }
        }
        self.last = Some((seq, item.hash));
        self.recent.insert(seq, (item.hash, item.signed));
        if item.signed {
            if linked {
                self.cover_down(seq - 1);
            }
        } else {
            self.pending.insert(
                seq,
                Pending {
                    hash: item.hash,
                    index: item.index,
                    status: item.status,
                    linked_down: linked && self.pending.contains_key(&(seq - 1)),
                },
            );
            let named = self.expected.remove(&seq);
            let by_checkpoint = self.checkpoint.as_ref().filter(|c| c.seq == seq).map(|c| c.head);
            match named.or(by_checkpoint) {
                Some(h) if h == item.hash => self.cover_down(seq),
                Some(_) if named.is_some() => self.replaced(seq),
                _ => {}
            }
        }
    }

    /// Batches `from..=to` are missing, less the bad rows already reported and what retention removed.
    fn gap(&mut self, from: u64, to: u64) {
        let from = from.max(self.start);
        if from > to {
            return;
        }
        let mut begin = from;
        for &s in self.reported.range(from..=to) {
            if s > begin {
                self.findings.push(Finding::Gap { from: begin, to: s - 1 });
            }
            begin = s + 1;
        }
        if begin <= to {
            self.findings.push(Finding::Gap { from: begin, to });
        }
    }

    /// The statuses known so far of the rows not taken yet, in input order,
    /// up to the first row still undecided.
    pub fn settled(&mut self) -> impl Iterator<Item = Status> + '_ {
        std::iter::from_fn(move || {
            let s = (*self.statuses.front()?)?;
            self.statuses.pop_front();
            self.base += 1;
            Some(s)
        })
    }

    /// Ends the audit: every row decided, the stream's end checked against
    /// the checkpoint, the retention record and memory.
    pub fn finish(mut self) -> Audit {
        self.advance(true);
        let last = self.max_item;
        if let Some(cp) = &self.checkpoint {
            if self.at_checkpoint.is_some_and(|h| h != cp.head) {
                self.findings.push(Finding::Fork { seq: cp.seq });
            }
            if self.scope.to_end && last.is_none_or(|l| l < cp.seq) && self.start <= cp.seq {
                self.findings.push(Finding::TruncatedTail { last, checkpoint: cp.seq });
            }
        }
        // The device keeps at least the newest batch: a retention record names one the store must hold.
        if self.scope.to_end
            && self.start > 0
            && last.is_none_or(|l| l < self.start)
            && self.checkpoint.as_ref().is_none_or(|c| c.seq < self.start)
        {
            self.findings.push(Finding::TruncatedTail { last, checkpoint: self.start });
        }
        if let Some(k) = self.remembered {
            if self.at_remembered.is_some_and(|h| h != k.hash) {
                self.findings.push(Finding::Fork { seq: k.seq });
            }
            let store_knows = last.max(self.checkpoint.as_ref().map(|c| c.seq)).max(self.start.checked_sub(1));
            if self.scope.to_end && store_knows.is_none_or(|s| s < k.seq) {
                self.findings.push(Finding::Rollback { store_head: last, seen: k.seq, seen_ts: k.ts });
            }
        }
        if let Some(cp) = &self.checkpoint
            && self.head.is_none_or(|h| cp.seq > h.seq)
        {
            self.head = Some(Head { seq: cp.seq, hash: cp.head, ts: cp.ts });
        }
        self.findings.sort_by_key(Finding::order);
        let statuses = self.statuses.iter().map(|s| s.unwrap_or(Status::Unsigned)).collect();
        Audit {
            statuses,
            findings: self.findings,
            head: self.head,
            checkpoint: self.checkpoint.map(|c| c.seq),
            start: self.start,
            rows: self.rows,
            authentic: self.authentic,
        }
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
        assert_eq!(kinds(&a), ["unsigned", "gap"]);
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

    /// The audit's rules over the whole stream at once, written plainly: what
    /// the streaming [`Auditor`] must find for any stream shorter than [`WINDOW`].
    fn oracle(
        rows: &[Inspected],
        checkpoints: &[&[u8]],
        retentions: &[&[u8]],
        remembered: Option<Head>,
        scope: Scope,
        device: DeviceId,
        stream: &StreamName,
    ) -> (Vec<Status>, Vec<Finding>, Option<Head>) {
        use std::collections::{HashMap, HashSet};
        let mut statuses = vec![Status::Verified; rows.len()];
        let mut findings = Vec::new();
        let mut reported: Vec<u64> = Vec::new();
        let mut by_seq: HashMap<u64, usize> = HashMap::new();
        // Batches stored more than WINDOW places before their own: taken where they are, not in the order.
        let mut astray: Vec<&Good> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let good = match &r.verdict {
                Ok(g) => g,
                Err(p) => {
                    reported.push(r.row_seq);
                    let (st, f) = match p {
                        RowProblem::Tampered(what) => {
                            (Status::Tampered, Finding::Tampered { row_seq: r.row_seq, what })
                        }
                        RowProblem::Foreign(signer) => {
                            (Status::Foreign, Finding::Foreign { row_seq: r.row_seq, signer: *signer })
                        }
                        RowProblem::Moved { device, stream, seq } => (
                            Status::Moved,
                            Finding::Moved { row_seq: r.row_seq, device: *device, stream: stream.clone(), seq: *seq },
                        ),
                    };
                    statuses[i] = st;
                    findings.push(f);
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
            if seq > r.row_seq.saturating_add(WINDOW) {
                findings.push(Finding::Reordered { seq, row_seq: r.row_seq });
                statuses[i] = if good.signed { Status::Reordered } else { Status::Unsigned };
                if !good.signed {
                    findings.push(Finding::Unsigned { seq });
                }
                astray.push(good);
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
            Err(_) => unreachable!(),
        };
        let mut order: Vec<u64> = by_seq.keys().copied().collect();
        order.sort_unstable();
        // Which records count is not what this checks (the auditor's own helper picks them).
        let (best_cp, ret, bad) = records(device, stream, checkpoints, retentions);
        findings.extend(bad);
        let start = ret.as_ref().map_or(0, |r| r.from);
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
        if let Some(cp) = &best_cp
            && let Some(&i) = by_seq.get(&cp.seq)
            && good(i).hash == cp.head
            && !good(i).signed
        {
            vouched.insert(cp.seq);
        }
        let push_gap = |findings: &mut Vec<Finding>, from: u64, to: u64| {
            let from = from.max(start);
            let mut begin = from;
            let mut inside: Vec<u64> = reported.iter().copied().filter(|s| (from..=to).contains(s)).collect();
            inside.sort_unstable();
            inside.dedup();
            for s in inside {
                if s > begin {
                    findings.push(Finding::Gap { from: begin, to: s - 1 });
                }
                begin = s + 1;
            }
            if from <= to && begin <= to {
                findings.push(Finding::Gap { from: begin, to });
            }
        };
        if scope.from_start
            && let Some(&first) = order.first()
            && first > start
        {
            push_gap(&mut findings, start, first - 1);
        }
        for w in order.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b != a + 1 {
                push_gap(&mut findings, a + 1, b - 1);
            } else if good(by_seq[&b]).header.prev != good(by_seq[&a]).hash && !contradicted.contains(&a) {
                findings.push(Finding::ChainBroken { seq: b });
            }
        }
        if let Some(r) = &ret {
            for &seq in &order {
                let g = good(by_seq[&seq]);
                if (seq == r.from && g.header.prev != r.head) || (seq + 1 == r.from && g.hash != r.head) {
                    findings.push(Finding::RetentionMismatch { seq });
                }
            }
        }
        let mut covered = false;
        for (k, &seq) in order.iter().enumerate().rev() {
            let g = good(by_seq[&seq]);
            let linked =
                order.get(k + 1).is_some_and(|&next| next == seq + 1 && good(by_seq[&next]).header.prev == g.hash);
            covered = covered && linked;
            covered |= g.signed || vouched.contains(&seq);
            if contradicted.contains(&seq) {
                statuses[by_seq[&seq]] = Status::Tampered;
                findings
                    .push(Finding::Tampered { row_seq: seq, what: "differs from the hash a signed batch vouches for" });
                covered = false;
            } else if !covered {
                statuses[by_seq[&seq]] = Status::Unsigned;
                findings.push(Finding::Unsigned { seq });
            }
        }
        let last = order.last().copied().max(astray.iter().map(|g| g.header.seq).max());
        let hash_at = |seq: u64| {
            by_seq.get(&seq).map(|&i| good(i).hash).or(astray.iter().find(|g| g.header.seq == seq).map(|g| g.hash))
        };
        if let Some(cp) = &best_cp {
            if hash_at(cp.seq).is_some_and(|h| h != cp.head) {
                findings.push(Finding::Fork { seq: cp.seq });
            }
            if scope.to_end && last.is_none_or(|l| l < cp.seq) && start <= cp.seq {
                findings.push(Finding::TruncatedTail { last, checkpoint: cp.seq });
            }
        }
        if scope.to_end && start > 0 && last.is_none_or(|l| l < start) && best_cp.as_ref().is_none_or(|c| c.seq < start)
        {
            findings.push(Finding::TruncatedTail { last, checkpoint: start });
        }
        if let Some(k) = remembered {
            if hash_at(k.seq).is_some_and(|h| h != k.hash) {
                findings.push(Finding::Fork { seq: k.seq });
            }
            let store_knows = last.max(best_cp.as_ref().map(|c| c.seq)).max(start.checked_sub(1));
            if scope.to_end && store_knows.is_none_or(|s| s < k.seq) {
                findings.push(Finding::Rollback { store_head: last, seen: k.seq, seen_ts: k.ts });
            }
        }
        let mut head = order
            .iter()
            .map(|&s| good(by_seq[&s]))
            .chain(astray.iter().copied())
            .filter(|g| g.signed)
            .max_by_key(|g| g.header.seq)
            .map(|g| Head { seq: g.header.seq, hash: g.hash, ts: g.header.last_ts });
        if let Some(cp) = &best_cp
            && head.is_none_or(|h| cp.seq > h.seq)
        {
            head = Some(Head { seq: cp.seq, hash: cp.head, ts: cp.ts });
        }
        (statuses, findings, head)
    }

    /// A small deterministic generator for the property below.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            if n == 0 { 0 } else { self.0 % n }
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// An honest stream as the sealer writes it (rounds ended by a signed
    /// batch that covers its round and the round before; or, as format v1,
    /// no covers), then what a store can do to its rows.
    fn attacked(seed: u64) -> (Fixture, Vec<(u64, Vec<u8>)>, Vec<Vec<u8>>, Vec<Vec<u8>>, Option<Head>, Scope) {
        let mut rng = Rng(seed | 1);
        let id = Identity::from_secret_bytes(&[1; 96]);
        let stream = StreamName::new("temperature").unwrap();
        let key = id.epoch_key(&stream, 0);
        let n = 1 + rng.below(40);
        let with_covers = rng.chance(70);
        let (mut prev, mut batches, mut heads, mut hashes) = (BatchHash::default(), Vec::new(), Vec::new(), Vec::new());
        let mut round_start = 0u64;
        let mut prev_round_start = 0u64;
        for seq in 0..n {
            let signed = seq + 1 == n || rng.chance(30);
            let covers: Vec<BatchHash> =
                if signed && with_covers { hashes[prev_round_start as usize..].to_vec() } else { Vec::new() };
            let r = Readings::Scalar(ScalarBatch {
                unit: "°C".into(),
                ts: vec![seq as i64 * 10],
                values: vec![20.0],
                labels: vec![],
            });
            let p = SealParams {
                device: id.device_id(),
                stream: stream.clone(),
                seq,
                epoch: 0,
                prev,
                salt: [seq as u8; 16],
                covers,
            };
            let s = seal(&r, &p, &key, signed.then_some(&id), &mut Vec::new()).unwrap();
            prev = s.hash;
            hashes.push(s.hash);
            heads.push(Head { seq, hash: s.hash, ts: seq as i64 * 10 });
            batches.push(s.bytes);
            if signed {
                prev_round_start = round_start;
                round_start = seq + 1;
            }
        }
        let f = Fixture { id, stream, batches, heads };
        let mut rows = f.rows();
        let mut retentions = Vec::new();
        if n > 2 && rng.chance(25) {
            let from = 1 + rng.below(n - 1);
            let rec = Retention {
                device: f.id.device_id(),
                stream: f.stream.clone(),
                from,
                head: f.heads[from as usize - 1].hash,
                before: 0,
                ts: 0,
            };
            retentions.push(rec.sign(&f.id).unwrap());
            let cut = rng.below(from + 1);
            rows.retain(|(s, _)| *s >= cut);
        }
        for _ in 0..rng.below(4) {
            if rows.is_empty() {
                break;
            }
            let i = rng.below(rows.len() as u64) as usize;
            match rng.below(7) {
                0 => {
                    rows.remove(i);
                }
                1 => {
                    let j = rng.below(rows.len() as u64) as usize;
                    let (a, b) = (rows[i].1.clone(), rows[j].1.clone());
                    rows[i].1 = b;
                    rows[j].1 = a;
                }
                2 => {
                    let at = rows.iter().map(|r| r.0).max().unwrap_or(0) + 1 + rng.below(3);
                    rows.push((at, rows[i].1.clone()));
                }
                3 => {
                    let len = rows[i].1.len() as u64;
                    let k = rng.below(len) as usize;
                    rows[i].1[k] ^= 1;
                }
                4 => {
                    // A holder of the key replaces an unsigned batch, chained to the one before.
                    let seq = rows[i].0;
                    let Ok(parsed) = envelope::parse(&rows[i].1) else { continue };
                    if parsed.is_signed() {
                        continue;
                    }
                    let r = Readings::Scalar(ScalarBatch {
                        unit: "°C".into(),
                        ts: vec![seq as i64 * 10],
                        values: vec![99.0],
                        labels: vec![],
                    });
                    let p = SealParams {
                        device: f.id.device_id(),
                        stream: f.stream.clone(),
                        seq,
                        epoch: 0,
                        prev: parsed.header.prev,
                        salt: [0xee; 16],
                        covers: Vec::new(),
                    };
                    rows[i].1 = seal(&r, &p, &key, None, &mut Vec::new()).unwrap().bytes;
                }
                5 => {
                    let other = fixture_for(3, "humidity");
                    let at = rows.iter().map(|r| r.0).max().unwrap_or(0) + 1;
                    rows.push((at, other.batches[0].clone()));
                }
                _ => {
                    let keep = rng.below(rows.len() as u64) as usize;
                    rows.truncate(keep.max(1));
                }
            }
        }
        rows.sort_by_key(|r| r.0);
        rows.dedup_by_key(|r| r.0);
        let mut cps = Vec::new();
        if rng.chance(50) {
            cps.push(f.checkpoint(rng.below(n)));
        }
        if rng.chance(10) {
            cps.push(fixture_for(4, "temperature").checkpoint(0));
        }
        let remembered = rng.chance(40).then(|| f.heads[rng.below(n) as usize]);
        let scope = Scope { from_start: true, to_end: rng.chance(80) };
        (f, rows, cps, retentions, remembered, scope)
    }

    #[test]
    fn a_long_stream_is_audited_in_bounded_state_and_shown_as_it_goes() {
        // 3 * WINDOW batches in rounds of 100, every one but the round's last unsigned.
        let id = Identity::from_secret_bytes(&[1; 96]);
        let stream = StreamName::new("t").unwrap();
        let key = id.epoch_key(&stream, 0);
        let n = 3 * WINDOW;
        let r = Readings::Scalar(ScalarBatch { unit: String::new(), ts: vec![1], values: vec![1.0], labels: vec![] });
        let mut prev = BatchHash::default();
        let mut rows: Vec<Inspected> = Vec::new();
        let mut round: Vec<BatchHash> = Vec::new();
        for seq in 0..n {
            let signed = seq % 100 == 99 || seq == n - 1;
            let p = SealParams {
                device: id.device_id(),
                stream: stream.clone(),
                seq,
                epoch: 0,
                prev,
                salt: [0; 16],
                covers: if signed { std::mem::take(&mut round) } else { Vec::new() },
            };
            let s = seal(&r, &p, &key, signed.then_some(&id), &mut Vec::new()).unwrap();
            prev = s.hash;
            if !signed {
                round.push(s.hash);
            }
            let verdict = Ok(Good { header: s.header, hash: s.hash, signed });
            rows.push(Inspected { row_seq: seq, verdict });
        }
        // Batch 10 is stored far away, in place of batch 2 * WINDOW (which is gone); and
        // batch 3 * WINDOW - 2 (unsigned) far before its place, in place of batch 20.
        let far = 2 * WINDOW;
        let moved = rows[10].clone();
        rows[far as usize] = Inspected { row_seq: far, ..moved };
        let ahead = 3 * WINDOW - 2;
        let early = rows[ahead as usize].clone();
        rows[20] = Inspected { row_seq: 20, ..early };
        rows.remove(ahead as usize);
        rows.remove(10);
        let mut a = Auditor::new(id.device_id(), &stream, &[], &[], None, Scope::WHOLE);
        let (mut shown, mut most) = (0usize, 0usize);
        for r in rows {
            a.push(r);
            shown += a.settled().count();
            most = most.max(a.window.len() + a.pending.len() + a.statuses.len());
            assert!(a.recent.len() as u64 <= WINDOW + 1);
        }
        assert!(most as u64 <= 2 * WINDOW, "held {most}");
        let audit = a.finish();
        shown += audit.statuses.len();
        assert_eq!(shown as u64, n - 2);
        // Too far to be taken for reordering: their places are gaps, and where they are, they are named.
        assert_eq!(
            audit.findings,
            [
                Finding::Gap { from: 10, to: 10 },
                Finding::Unsigned { seq: 10 },
                Finding::Reordered { seq: ahead, row_seq: 20 },
                Finding::Gap { from: 20, to: 20 },
                Finding::Reordered { seq: 10, row_seq: far },
                Finding::Gap { from: far, to: far },
                Finding::Unsigned { seq: ahead },
                Finding::Gap { from: ahead, to: ahead }
            ]
        );
    }

    fn sorted(mut f: Vec<Finding>) -> Vec<Finding> {
        f.sort_by_key(|x| (x.order(), x.to_string()));
        f
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn the_streaming_audit_finds_what_the_whole_stream_shows(seed: u64) {
            let (f, rows, cps, rets, remembered, scope) = attacked(seed);
            let inspected: Vec<Inspected> = rows
                .iter()
                .map(|(seq, b)| inspect(f.id.device_id(), &f.stream, honest_row(*seq, b, &mut [0; 32])))
                .collect();
            let cps: Vec<&[u8]> = cps.iter().map(Vec::as_slice).collect();
            let rets: Vec<&[u8]> = rets.iter().map(Vec::as_slice).collect();
            // Known difference: a batch from below both the first row read and a retention
            // record's start, stored further on, is named where it is found as a copy.
            let start = rets.first().map_or(0, |r| Retention::parse(r).map_or(0, |r| r.0.from));
            let first_row = inspected.first().map_or(0, |r| r.row_seq);
            proptest::prop_assume!(
                start == 0 || !inspected.iter().any(|r| r.verdict.as_ref().is_ok_and(|g| g.header.seq < start.min(first_row)))
            );
            let (statuses, findings, head) =
                oracle(&inspected, &cps, &rets, remembered, scope, f.id.device_id(), &f.stream);
            // Fed one row at a time, taking statuses as they settle.
            let mut a = Auditor::new(f.id.device_id(), &f.stream, &cps, &rets, remembered, scope);
            let mut got = Vec::new();
            for r in inspected {
                a.push(r);
                got.extend(a.settled());
            }
            let audit = a.finish();
            got.extend(audit.statuses.iter().copied());
            proptest::prop_assert_eq!(&got, &statuses);
            proptest::prop_assert_eq!(sorted(audit.findings.clone()), sorted(findings));
            proptest::prop_assert_eq!(audit.head, head);
            proptest::prop_assert_eq!(audit.authentic as usize, statuses.iter().filter(|s| s.is_authentic()).count());
        }
    }

    #[test]
    fn a_retention_record_starts_the_stream_and_only_removes_what_it_names() {
        let f = fixture(8);
        let record = |from: u64, id: &Identity| {
            Retention {
                device: f.id.device_id(),
                stream: f.stream.clone(),
                from,
                head: f.heads[from as usize - 1].hash,
                before: 0,
                ts: 0,
            }
            .sign(id)
        };
        let rec = record(5, &f.id).unwrap();
        let audit = |rows: &[(u64, Vec<u8>)], rets: &[&[u8]]| {
            let inspected: Vec<Inspected> = rows
                .iter()
                .map(|(seq, b)| inspect(f.id.device_id(), &f.stream, honest_row(*seq, b, &mut [0; 32])))
                .collect();
            let mut a = Auditor::new(f.id.device_id(), &f.stream, &[], rets, Some(f.heads[7]), Scope::WHOLE);
            for r in inspected {
                a.push(r);
            }
            a.finish()
        };
        let kept: Vec<(u64, Vec<u8>)> = f.rows().into_iter().filter(|(s, _)| *s >= 5).collect();
        // Without the record the removed batches are a gap; with it the stream starts at 5.
        assert_eq!(audit(&kept, &[]).findings, [Finding::Gap { from: 0, to: 4 }]);
        let a = audit(&kept, &[&rec]);
        assert!(a.is_clean(), "{:?}", a.findings);
        assert_eq!((a.start, a.authentic), (5, 3));
        // Removing one more is still a gap; so is one in the middle.
        let a = audit(&kept[1..], &[&rec]);
        assert_eq!(a.findings, [Finding::Gap { from: 5, to: 5 }]);
        let mut holed = kept.clone();
        holed.remove(1);
        assert_eq!(audit(&holed, &[&rec]).findings, [Finding::Gap { from: 6, to: 6 }]);
        // Batches below the start that are still there are read as usual.
        assert!(audit(&f.rows()[3..], &[&rec]).is_clean());
        // A record not signed by the device removes nothing.
        let forged = record(5, &Identity::from_secret_bytes(&[2; 96]));
        assert!(forged.is_err());
        let other = fixture_for(2, "temperature");
        let theirs = Retention {
            device: other.id.device_id(),
            stream: f.stream.clone(),
            from: 5,
            head: BatchHash::default(),
            before: 0,
            ts: 0,
        }
        .sign(&other.id)
        .unwrap();
        assert_eq!(
            kinds(&audit(&kept, &[&theirs])),
            ["gap", "bad-retention"],
            "a record of another device is not this stream's"
        );
        // Everything removed, the head too: the stream must still hold its head.
        let a = audit(&[], &[&rec]);
        assert_eq!(
            a.findings,
            [
                Finding::TruncatedTail { last: None, checkpoint: 5 },
                Finding::Rollback { store_head: None, seen: 7, seen_ts: 75 }
            ]
        );
    }
}
