//! Readings as the core sees them: one batch holds readings of one stream, in
//! columns (the same layout the codec writes), and what one batch may hold.

/// Most readings one batch may hold.
pub const MAX_READINGS: usize = 1 << 20;
/// Longest unit, media type or label, in bytes.
pub const MAX_TEXT: usize = 256;
/// Largest blob reading, in bytes.
pub const MAX_BLOB: usize = 64 << 20;

/// Scalar readings: a value with a unit per stream and an optional label per
/// reading. Timestamps are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScalarBatch {
    pub unit: String,
    pub ts: Vec<i64>,
    pub values: Vec<f64>,
    /// Empty when no reading has a label; otherwise one entry per reading.
    pub labels: Vec<Option<String>>,
}

/// Opaque binary readings (e.g. camera images) of one media type.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlobBatch {
    pub media_type: String,
    pub ts: Vec<i64>,
    pub items: Vec<Vec<u8>>,
}

/// The readings of one batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Readings {
    Scalar(ScalarBatch),
    Blob(BlobBatch),
}

impl Readings {
    pub fn len(&self) -> usize {
        self.ts().len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts().is_empty()
    }

    pub fn ts(&self) -> &[i64] {
        match self {
            Readings::Scalar(b) => &b.ts,
            Readings::Blob(b) => &b.ts,
        }
    }

    /// Earliest and latest timestamp (readings need not be sorted).
    pub fn time_range(&self) -> Option<(i64, i64)> {
        let ts = self.ts();
        let first = *ts.first()?;
        Some(ts.iter().fold((first, first), |(lo, hi), &t| (lo.min(t), hi.max(t))))
    }

    /// The readings one by one, as `stream`'s (the inverse of [`into_batches`]).
    pub fn to_readings(&self, stream: &crate::StreamName) -> Vec<Reading> {
        match self {
            Readings::Scalar(b) => {
                b.ts.iter()
                    .zip(&b.values)
                    .enumerate()
                    .map(|(i, (&ts, &value))| Reading {
                        stream: stream.clone(),
                        ts,
                        value: Value::Scalar { value, unit: b.unit.clone(), label: b.labels.get(i).cloned().flatten() },
                    })
                    .collect()
            }
            Readings::Blob(b) => {
                b.ts.iter()
                    .zip(&b.items)
                    .map(|(&ts, data)| Reading {
                        stream: stream.clone(),
                        ts,
                        value: Value::Blob { media_type: b.media_type.clone(), data: data.clone() },
                    })
                    .collect()
            }
        }
    }

    /// Keeps only the readings later than `ts` (in their order).
    pub fn retain_after(&mut self, ts: i64) {
        fn keep<T>(col: &mut Vec<T>, times: &[i64], ts: i64) {
            if col.len() == times.len() {
                let mut i = 0;
                col.retain(|_| {
                    i += 1;
                    times[i - 1] > ts
                });
            }
        }
        match self {
            Readings::Scalar(b) => {
                keep(&mut b.values, &b.ts, ts);
                keep(&mut b.labels, &b.ts, ts);
                b.ts.retain(|&t| t > ts);
            }
            Readings::Blob(b) => {
                keep(&mut b.items, &b.ts, ts);
                b.ts.retain(|&t| t > ts);
            }
        }
    }

    /// Checks that the columns have matching lengths.
    pub fn is_consistent(&self) -> bool {
        match self {
            Readings::Scalar(b) => {
                b.values.len() == b.ts.len() && (b.labels.is_empty() || b.labels.len() == b.ts.len())
            }
            Readings::Blob(b) => b.items.len() == b.ts.len(),
        }
    }
}

/// One reading as a sensor produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub stream: crate::StreamName,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar { value: f64, unit: String, label: Option<String> },
    Blob { media_type: String, data: Vec<u8> },
}

/// Why a reading cannot be sealed, found before it is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("its time ({0} ms) is outside the years 0000-9999")]
    TimeOutOfRange(i64),
    #[error("its {what} is {len} bytes long; at most {max} are allowed", max = MAX_TEXT)]
    TextTooLong { what: &'static str, len: usize },
    #[error("its blob is {0} bytes; at most {max} are allowed", max = MAX_BLOB)]
    BlobTooLarge(usize),
}

impl Refusal {
    /// The reason as a metric's label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TimeOutOfRange(_) => "time_out_of_range",
            Refusal::TextTooLong { .. } => "text_too_long",
            Refusal::BlobTooLarge(_) => "blob_too_large",
        }
    }
}

impl Reading {
    /// Checks everything sealing will need of this reading (time, text
    /// lengths, blob size), so a reading accepted is a reading that seals.
    pub fn check(&self) -> Result<(), Refusal> {
        if !(crate::time::MIN_TS..=crate::time::MAX_TS).contains(&self.ts) {
            return Err(Refusal::TimeOutOfRange(self.ts));
        }
        let text = |what, s: &str| match s.len() {
            len if len > MAX_TEXT => Err(Refusal::TextTooLong { what, len }),
            _ => Ok(()),
        };
        match &self.value {
            Value::Scalar { unit, label, .. } => {
                text("unit", unit)?;
                text("label", label.as_deref().unwrap_or_default())
            }
            Value::Blob { media_type, data } => {
                text("media type", media_type)?;
                match data.len() {
                    n if n > MAX_BLOB => Err(Refusal::BlobTooLarge(n)),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// Most bytes of blobs one batch holds; a blob larger than this gets a batch
/// of its own (up to [`MAX_BLOB`]), well within the format's
/// ciphertext limit. 15 MiB, so a batch of blobs fits one MQTT packet of
/// 16 MiB with its header.
pub const BATCH_BLOB_BYTES: usize = 15 << 20;

/// Turns readings of one stream, in order, into batches: a new batch starts
/// wherever the kind, unit or media type changes, since a batch has one of
/// each, and wherever the batch would exceed [`MAX_READINGS`] readings
/// or [`BATCH_BLOB_BYTES`] of blobs. Returns each batch with the index of its
/// last input reading.
pub fn into_batches(readings: &[Reading]) -> Vec<(Readings, usize)> {
    let mut out: Vec<(Readings, usize)> = Vec::new();
    let mut blob_bytes = 0usize;
    for (i, r) in readings.iter().enumerate() {
        let fits = match (out.last_mut().map(|(b, _)| b), &r.value) {
            (Some(b), _) if b.len() >= MAX_READINGS => false,
            (Some(Readings::Scalar(b)), Value::Scalar { unit, .. }) => &b.unit == unit,
            (Some(Readings::Blob(b)), Value::Blob { media_type, data }) => {
                &b.media_type == media_type && blob_bytes.saturating_add(data.len()) <= BATCH_BLOB_BYTES
            }
            _ => false,
        };
        if !fits {
            blob_bytes = 0;
            out.push(match &r.value {
                Value::Scalar { unit, .. } => {
                    (Readings::Scalar(ScalarBatch { unit: unit.clone(), ..Default::default() }), i)
                }
                Value::Blob { media_type, .. } => {
                    (Readings::Blob(BlobBatch { media_type: media_type.clone(), ..Default::default() }), i)
                }
            });
        }
        let (batch, last) = out.last_mut().expect("a batch was just ensured");
        *last = i;
        match (batch, &r.value) {
            (Readings::Scalar(b), Value::Scalar { value, label, .. }) => {
                b.ts.push(r.ts);
                b.values.push(*value);
                // Labels stay empty until the first labelled reading; from then on one per reading.
                if label.is_some() || !b.labels.is_empty() {
                    b.labels.resize(b.ts.len() - 1, None);
                    b.labels.push(label.clone());
                }
            }
            (Readings::Blob(b), Value::Blob { data, .. }) => {
                blob_bytes = blob_bytes.saturating_add(data.len());
                b.ts.push(r.ts);
                b.items.push(data.clone());
            }
            _ => unreachable!("kinds were matched above"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(ts: i64, unit: &str, label: Option<&str>) -> Reading {
        Reading {
            stream: crate::StreamName::new("s").unwrap(),
            ts,
            value: Value::Scalar { value: ts as f64, unit: unit.into(), label: label.map(Into::into) },
        }
    }

    #[test]
    fn to_readings_inverts_into_batches() {
        let blob = |ts: i64| Reading {
            stream: crate::StreamName::new("s").unwrap(),
            ts,
            value: Value::Blob { media_type: "image/png".into(), data: vec![ts as u8; 3] },
        };
        let rs = vec![scalar(1, "C", None), scalar(2, "C", Some("hot")), blob(3), scalar(4, "F", None), blob(5)];
        let back: Vec<Reading> =
            into_batches(&rs).iter().flat_map(|(b, _)| b.to_readings(&crate::StreamName::new("s").unwrap())).collect();
        assert_eq!(back, rs);
    }

    #[test]
    fn retain_after_keeps_later_readings_with_their_labels() {
        let rs = vec![scalar(3, "C", Some("a")), scalar(1, "C", None), scalar(5, "C", Some("b")), scalar(2, "C", None)];
        let (mut b, _) = into_batches(&rs).remove(0);
        b.retain_after(2);
        let s = crate::StreamName::new("s").unwrap();
        assert_eq!(b.to_readings(&s), vec![rs[0].clone(), rs[2].clone()]);
        assert!(b.is_consistent());
    }

    #[test]
    fn batches_split_on_unit_change_and_keep_labels_aligned() {
        let rs = vec![scalar(1, "C", None), scalar(2, "C", Some("hot")), scalar(3, "F", None), scalar(4, "F", None)];
        let b = into_batches(&rs);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].1, 1);
        assert_eq!(b[1].1, 3);
        let Readings::Scalar(s) = &b[0].0 else { panic!() };
        assert_eq!(s.labels, vec![None, Some("hot".to_string())]);
        let Readings::Scalar(s) = &b[1].0 else { panic!() };
        assert!(s.labels.is_empty());
    }

    #[test]
    fn the_first_reading_keeps_its_label() {
        let b = into_batches(&[scalar(1, "C", Some("Normal"))]);
        let Readings::Scalar(s) = &b[0].0 else { panic!() };
        assert_eq!(s.labels, vec![Some("Normal".to_string())]);
        let b = into_batches(&[scalar(1, "C", Some("a")), scalar(2, "C", None), scalar(3, "C", Some("c"))]);
        let Readings::Scalar(s) = &b[0].0 else { panic!() };
        assert_eq!(s.labels, vec![Some("a".to_string()), None, Some("c".to_string())]);
    }

    fn blob(ts: i64, len: usize) -> Reading {
        Reading {
            stream: crate::StreamName::new("cam").unwrap(),
            ts,
            value: Value::Blob { media_type: "image/jpeg".into(), data: vec![7; len] },
        }
    }

    #[test]
    fn blobs_that_together_exceed_a_batch_are_split() {
        let big = BATCH_BLOB_BYTES / 2 + 1;
        let b = into_batches(&[blob(1, big), blob(2, big), blob(3, 10), blob(4, BATCH_BLOB_BYTES + 5)]);
        let counts: Vec<usize> = b.iter().map(|(r, _)| r.len()).collect();
        assert_eq!(counts, [1, 2, 1]);
        assert_eq!(b.iter().map(|(_, last)| *last).collect::<Vec<_>>(), [0, 2, 3]);
    }

    #[test]
    fn checks_refuse_what_cannot_be_sealed() {
        assert_eq!(scalar(-1, "C", None).check(), Ok(()));
        assert_eq!(
            scalar(crate::time::MAX_TS + 1, "C", None).check(),
            Err(Refusal::TimeOutOfRange(crate::time::MAX_TS + 1))
        );
        assert!(matches!(scalar(i64::MIN, "C", None).check(), Err(Refusal::TimeOutOfRange(_))));
        let long = "x".repeat(MAX_TEXT + 1);
        assert!(matches!(scalar(1, &long, None).check(), Err(Refusal::TextTooLong { what: "unit", .. })));
        assert!(matches!(scalar(1, "C", Some(&long)).check(), Err(Refusal::TextTooLong { what: "label", .. })));
        assert_eq!(blob(1, MAX_BLOB + 1).check(), Err(Refusal::BlobTooLarge(MAX_BLOB + 1)));
        assert_eq!(blob(1, 10).check(), Ok(()));
    }
}
