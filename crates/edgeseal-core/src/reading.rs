//! Readings as the core sees them: one batch holds readings of one stream, in
//! columns (the same layout the codec writes).

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

/// Turns readings of one stream, in order, into batches: a new batch starts
/// wherever the kind, unit or media type changes, since a batch has one of
/// each. Returns each batch with the index of its last input reading.
pub fn into_batches(readings: &[Reading]) -> Vec<(Readings, usize)> {
    let mut out: Vec<(Readings, usize)> = Vec::new();
    for (i, r) in readings.iter().enumerate() {
        let fits = match (out.last_mut().map(|(b, _)| b), &r.value) {
            (Some(Readings::Scalar(b)), Value::Scalar { unit, .. }) => &b.unit == unit,
            (Some(Readings::Blob(b)), Value::Blob { media_type, .. }) => &b.media_type == media_type,
            _ => false,
        };
        if !fits {
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
                if label.is_some() && b.labels.is_empty() {
                    b.labels = vec![None; b.ts.len() - 1];
                }
                if !b.labels.is_empty() {
                    b.labels.push(label.clone());
                }
            }
            (Readings::Blob(b), Value::Blob { data, .. }) => {
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
}
