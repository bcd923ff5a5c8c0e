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
