//! The plaintext body of a sealed batch: readings encoded column by column.
//!
//! * timestamps: first value, first delta, then delta-of-delta (a steady
//!   sampling rate gives zeros), zigzag-mapped and block bit-packed;
//! * values: *decimal scaling* — the smallest `d ≤ 9` such that every value
//!   times 10^d is an integer that divides back to the identical f64 — then
//!   deltas of those integers, zigzag, bit-packed. Sensors report at a fixed
//!   resolution (0.1 °C, a 10-bit ADC), so deltas need a few bits each.
//!   Values that do not scale exactly (NaN, -0.0, full-precision floats) fall
//!   back to raw IEEE 754 bits. Decoding is lossless bit for bit;
//! * labels: a dictionary plus run lengths;
//! * blobs: lengths then bytes.
//!
//! The byte layout is in `docs/format.md`.

use crate::bits;
use crate::error::{Error, Result};
use crate::reading::{BlobBatch, Readings, ScalarBatch};
use crate::varint::{get_i64, get_len, get_str, get_u64, put_i64, put_str, put_u64, take};

pub use crate::reading::{MAX_BLOB, MAX_READINGS, MAX_TEXT};

const KIND_SCALAR: u8 = 1;
const KIND_BLOB: u8 = 2;
const VALUES_DECIMAL: u8 = 0;
const VALUES_RAW: u8 = 1;
const MAX_DECIMALS: usize = 9;
const POW10: [f64; MAX_DECIMALS + 1] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// Integers beyond 2^53 are not all exactly representable in an f64.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

/// Encodes a batch, appending to `out`.
pub fn encode(readings: &Readings, out: &mut Vec<u8>) -> Result<()> {
    if !readings.is_consistent() {
        return Err(Error::Unencodable("columns of different lengths"));
    }
    if readings.len() > MAX_READINGS {
        return Err(Error::Unencodable("more readings than one batch may hold"));
    }
    match readings {
        Readings::Scalar(b) => {
            check_text(&b.unit)?;
            out.push(KIND_SCALAR);
            put_u64(out, b.ts.len() as u64);
            put_str(out, &b.unit);
            encode_ts(&b.ts, out);
            encode_values(&b.values, out);
            encode_labels(&b.labels, out)?;
        }
        Readings::Blob(b) => {
            check_text(&b.media_type)?;
            if b.items.iter().any(|i| i.len() > MAX_BLOB) {
                return Err(Error::Unencodable("blob larger than 64 MiB"));
            }
            out.push(KIND_BLOB);
            put_u64(out, b.ts.len() as u64);
            put_str(out, &b.media_type);
            encode_ts(&b.ts, out);
            for item in &b.items {
                put_u64(out, item.len() as u64);
            }
            for item in &b.items {
                out.extend_from_slice(item);
            }
        }
    }
    Ok(())
}

/// Decodes a whole body; trailing bytes are an error.
pub fn decode(mut input: &[u8]) -> Result<Readings> {
    let input = &mut input;
    let kind = take(input, 1)?[0];
    let readings = match kind {
        KIND_SCALAR => {
            let n = get_len(input, 0, MAX_READINGS)?;
            let unit = get_str(input, MAX_TEXT)?;
            let ts = decode_ts(input, n)?;
            let values = decode_values(input, n)?;
            let labels = decode_labels(input, n)?;
            Readings::Scalar(ScalarBatch { unit, ts, values, labels })
        }
        KIND_BLOB => {
            let n = get_len(input, 0, MAX_READINGS)?;
            let media_type = get_str(input, MAX_TEXT)?;
            let ts = decode_ts(input, n)?;
            let mut lens = Vec::with_capacity(n.min(input.len()));
            for _ in 0..n {
                lens.push(get_len(input, 1, MAX_BLOB)?);
            }
            let mut items = Vec::with_capacity(lens.len());
            for len in lens {
                items.push(take(input, len)?.to_vec());
            }
            Readings::Blob(BlobBatch { media_type, ts, items })
        }
        _ => return Err(Error::Invalid("unknown payload kind")),
    };
    if !input.is_empty() {
        return Err(Error::Invalid("trailing bytes after the body"));
    }
    Ok(readings)
}

fn check_text(s: &str) -> Result<()> {
    if s.len() > MAX_TEXT {
        return Err(Error::Unencodable("unit, media type or label longer than 256 bytes"));
    }
    Ok(())
}

fn encode_ts(ts: &[i64], out: &mut Vec<u8>) {
    let Some(&first) = ts.first() else { return };
    put_i64(out, first);
    if ts.len() < 2 {
        return;
    }
    let d1 = ts[1].wrapping_sub(first);
    put_i64(out, d1);
    let mut dods = Vec::with_capacity(ts.len() - 2);
    let mut prev_delta = d1;
    for w in ts[1..].windows(2) {
        let d = w[1].wrapping_sub(w[0]);
        dods.push(crate::varint::zigzag(d.wrapping_sub(prev_delta)));
        prev_delta = d;
    }
    bits::pack(&dods, out);
}

fn decode_ts(input: &mut &[u8], n: usize) -> Result<Vec<i64>> {
    let mut ts = Vec::with_capacity(n.min(input.len().saturating_mul(bits::BLOCK) + 2));
    if n == 0 {
        return Ok(ts);
    }
    let first = get_i64(input)?;
    ts.push(first);
    if n == 1 {
        return Ok(ts);
    }
    let mut delta = get_i64(input)?;
    let mut cur = first.wrapping_add(delta);
    ts.push(cur);
    let mut dods = Vec::with_capacity(n - 2);
    bits::unpack(input, n - 2, &mut dods)?;
    for dod in dods {
        delta = delta.wrapping_add(crate::varint::unzigzag(dod));
        cur = cur.wrapping_add(delta);
        ts.push(cur);
    }
    Ok(ts)
}

/// The smallest number of decimals at which every value is an exact scaled
/// integer: one that decodes (as [`decode_values`] does, from an `i64`) to
/// the identical bits. NaN and -0.0 never do (an integer has no sign of
/// zero); infinities and huge values fail the bound.
fn decimal_scale(values: &[f64]) -> Option<usize> {
    'next: for (d, &scale) in POW10.iter().enumerate() {
        for &v in values {
            let i = (v * scale).round();
            if i.is_nan() || i.abs() >= MAX_EXACT || ((i as i64) as f64 / scale).to_bits() != v.to_bits() {
                continue 'next;
            }
        }
        return Some(d);
    }
    None
}

fn encode_values(values: &[f64], out: &mut Vec<u8>) {
    if values.is_empty() {
        return;
    }
    match decimal_scale(values) {
        Some(d) => {
            out.push(VALUES_DECIMAL);
            out.push(d as u8);
            let scale = POW10[d];
            let first = (values[0] * scale).round() as i64;
            put_i64(out, first);
            let mut prev = first;
            let deltas: Vec<u64> = values[1..]
                .iter()
                .map(|&v| {
                    let i = (v * scale).round() as i64;
                    let z = crate::varint::zigzag(i.wrapping_sub(prev));
                    prev = i;
                    z
                })
                .collect();
            bits::pack(&deltas, out);
        }
        None => {
            out.push(VALUES_RAW);
            for v in values {
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
    }
}

fn decode_values(input: &mut &[u8], n: usize) -> Result<Vec<f64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let scheme = take(input, 1)?[0];
    match scheme {
        VALUES_DECIMAL => {
            let d = usize::from(take(input, 1)?[0]);
            let scale = *POW10.get(d).ok_or(Error::Invalid("decimal scale above 9"))?;
            let mut cur = get_i64(input)?;
            let mut deltas = Vec::with_capacity(n - 1);
            bits::unpack(input, n - 1, &mut deltas)?;
            let mut values = Vec::with_capacity(n);
            values.push(cur as f64 / scale);
            for z in deltas {
                cur = cur.wrapping_add(crate::varint::unzigzag(z));
                values.push(cur as f64 / scale);
            }
            Ok(values)
        }
        VALUES_RAW => {
            let raw = take(input, n.checked_mul(8).ok_or(Error::Truncated)?)?;
            Ok(raw
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_bits(u64::from_le_bytes(b))
                })
                .collect())
        }
        _ => Err(Error::Invalid("unknown value scheme")),
    }
}

fn encode_labels(labels: &[Option<String>], out: &mut Vec<u8>) -> Result<()> {
    let mut dict: Vec<&str> = Vec::new();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for label in labels {
        let idx = match label {
            None => 0,
            Some(l) => {
                check_text(l)?;
                match dict.iter().position(|d| d == l) {
                    Some(p) => p as u64 + 1,
                    None => {
                        dict.push(l);
                        dict.len() as u64
                    }
                }
            }
        };
        match runs.last_mut() {
            Some((i, run)) if *i == idx => *run += 1,
            _ => runs.push((idx, 1)),
        }
    }
    put_u64(out, dict.len() as u64);
    if dict.is_empty() {
        return Ok(());
    }
    for d in &dict {
        put_str(out, d);
    }
    put_u64(out, runs.len() as u64);
    for (idx, run) in runs {
        put_u64(out, idx);
        put_u64(out, run);
    }
    Ok(())
}

fn decode_labels(input: &mut &[u8], n: usize) -> Result<Vec<Option<String>>> {
    let ndict = get_len(input, 1, MAX_READINGS)?;
    if ndict == 0 {
        return Ok(Vec::new());
    }
    let mut dict = Vec::with_capacity(ndict);
    for _ in 0..ndict {
        dict.push(get_str(input, MAX_TEXT)?);
    }
    let nruns = get_len(input, 2, MAX_READINGS)?;
    let mut labels = Vec::with_capacity(n);
    for _ in 0..nruns {
        let idx = get_u64(input)?;
        let run = get_len(input, 0, n - labels.len())?;
        let label = match idx {
            0 => None,
            i => Some(
                dict.get(usize::try_from(i - 1).map_err(|_| Error::Invalid("label index"))?)
                    .ok_or(Error::Invalid("label index outside the dictionary"))?
                    .clone(),
            ),
        };
        labels.extend(std::iter::repeat_n(label, run));
    }
    if labels.len() != n {
        return Err(Error::Invalid("label runs do not cover the batch"));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(r: &Readings) -> Readings {
        let mut buf = Vec::new();
        encode(r, &mut buf).unwrap();
        decode(&buf).unwrap()
    }

    fn same_bits(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    proptest! {
        #[test]
        fn scalars_round_trip_bit_for_bit(
            ts in proptest::collection::vec(any::<i64>(), 0..300),
            seed in any::<u64>(),
            decimals in 0u32..4,
            raw in any::<bool>(),
        ) {
            let values: Vec<f64> = ts.iter().enumerate().map(|(i, _)| {
                let x = seed.wrapping_mul(i as u64 + 1) % 100_000;
                if raw { f64::from_bits(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) }
                else { x as f64 / 10f64.powi(decimals as i32) }
            }).collect();
            let labels = if seed % 2 == 0 { Vec::new() } else {
                ts.iter().map(|t| (t % 3 == 0).then(|| format!("l{}", t % 5))).collect()
            };
            let r = Readings::Scalar(ScalarBatch { unit: "°C".into(), ts, values: values.clone(), labels });
            let back = round_trip(&r);
            let (Readings::Scalar(a), Readings::Scalar(b)) = (&r, &back) else { panic!() };
            prop_assert_eq!(&a.ts, &b.ts);
            let expected: &[Option<String>] = if a.labels.iter().all(Option::is_none) { &[] } else { &a.labels };
            prop_assert_eq!(expected, &b.labels[..]);
            prop_assert!(same_bits(&a.values, &b.values));
        }

        /// Labels on any subset of readings, through the batcher's column
        /// builder, come back on exactly those readings.
        #[test]
        fn labels_on_any_subset_survive(which in proptest::collection::vec(proptest::option::of(0u8..4), 1..200)) {
            let stream = crate::StreamName::new("s").unwrap();
            let readings: Vec<crate::Reading> = which.iter().enumerate().map(|(i, l)| crate::Reading {
                stream: stream.clone(),
                ts: i as i64,
                value: crate::Value::Scalar { value: i as f64, unit: "u".into(), label: l.map(|l| format!("l{l}")) },
            }).collect();
            let batches = crate::reading::into_batches(&readings);
            prop_assert_eq!(batches.len(), 1);
            let Readings::Scalar(b) = round_trip(&batches[0].0) else { panic!() };
            let want: Vec<Option<String>> = which.iter().map(|l| l.map(|l| format!("l{l}"))).collect();
            if want.iter().all(Option::is_none) {
                prop_assert!(b.labels.is_empty());
            } else {
                prop_assert_eq!(b.labels, want);
            }
        }

        /// Any mix of ordinary and special values (-0.0, subnormals,
        /// infinities, NaN payloads) comes back bit for bit, whichever scheme
        /// the encoder picks.
        #[test]
        fn special_values_round_trip_in_every_scheme(
            picks in proptest::collection::vec((0u8..8, any::<u64>()), 1..200),
        ) {
            let values: Vec<f64> = picks.iter().map(|&(k, bits)| match k {
                0 => -0.0,
                1 => f64::from_bits(bits & 0x000f_ffff_ffff_ffff | 1), // subnormal
                2 => if bits % 2 == 0 { f64::INFINITY } else { f64::NEG_INFINITY },
                3 => f64::from_bits(0x7ff0_0000_0000_0000 | (bits & 0x000f_ffff_ffff_ffff) | 1), // NaN payload
                4 => f64::from_bits(bits),
                _ => (bits % 20_000) as f64 / 10.0 - 1000.0, // decimal-friendly
            }).collect();
            let ts = (0..values.len() as i64).collect();
            let r = Readings::Scalar(ScalarBatch { unit: "u".into(), ts, values: values.clone(), labels: vec![] });
            let Readings::Scalar(b) = round_trip(&r) else { panic!() };
            prop_assert!(same_bits(&b.values, &values));
        }

        #[test]
        fn blobs_round_trip(items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..20)) {
            let ts = (0..items.len() as i64).map(|i| 1_700_000_000_000 + i * 333).collect();
            let r = Readings::Blob(BlobBatch { media_type: "image/jpeg".into(), ts, items });
            prop_assert_eq!(round_trip(&r), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn negative_zero_among_decimals_keeps_its_sign() {
        for values in [vec![-0.0], vec![21.5, -0.0, 21.6], vec![0.0, -0.0]] {
            let r = Readings::Scalar(ScalarBatch {
                unit: String::new(),
                ts: (0..values.len() as i64).collect(),
                values: values.clone(),
                labels: vec![],
            });
            let Readings::Scalar(b) = round_trip(&r) else { panic!() };
            assert!(same_bits(&b.values, &values), "{values:?} came back as {:?}", b.values);
        }
        // Only the sign of zero needs the raw scheme: ordinary decimals stay compact.
        let mut buf = Vec::new();
        let r = Readings::Scalar(ScalarBatch {
            unit: String::new(),
            ts: vec![1, 2],
            values: vec![0.0, 21.5],
            labels: vec![],
        });
        encode(&r, &mut buf).unwrap();
        assert!(buf.len() < 16, "{} bytes", buf.len());
    }

    #[test]
    fn special_values_survive() {
        let values = vec![f64::NAN, -0.0, f64::INFINITY, 1e300, 0.1 + 0.2];
        let r = Readings::Scalar(ScalarBatch {
            unit: String::new(),
            ts: vec![1, 2, 3, 4, 5],
            values: values.clone(),
            labels: vec![],
        });
        let Readings::Scalar(b) = round_trip(&r) else { panic!() };
        assert!(same_bits(&b.values, &values));
    }

    #[test]
    fn sensor_data_is_compact() {
        // 1 Hz, 0.1 °C resolution, small noise: well under one byte per reading.
        let n = 1000;
        let ts: Vec<i64> = (0..n).map(|i| 1_700_000_000_000 + i * 1000).collect();
        let values: Vec<f64> = (0..n).map(|i| (215 + (i * 7919) % 5 - 2) as f64 / 10.0).collect();
        let r = Readings::Scalar(ScalarBatch { unit: "°C".into(), ts, values, labels: vec![] });
        let mut buf = Vec::new();
        encode(&r, &mut buf).unwrap();
        assert!(buf.len() < n as usize * 6 / 10, "{} bytes", buf.len());
        assert_eq!(decode(&buf).unwrap(), r);
    }
}
