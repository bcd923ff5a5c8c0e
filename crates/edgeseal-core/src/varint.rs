//! LEB128 unsigned varints and zigzag mapping of signed integers.

use crate::error::{Error, Result};

pub fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn get_u64(input: &mut &[u8]) -> Result<u64> {
    let mut v: u64 = 0;
    for (i, &b) in input.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return Err(Error::Invalid("varint overflows 64 bits"));
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            *input = &input[i + 1..];
            return Ok(v);
        }
    }
    if input.len() >= 10 { Err(Error::Invalid("varint longer than 10 bytes")) } else { Err(Error::Truncated) }
}

pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, zigzag(v));
}

pub fn get_i64(input: &mut &[u8]) -> Result<i64> {
    get_u64(input).map(unzigzag)
}

/// A length that must fit in what is left of the input (each element takes at
/// least `min_bytes_each`), so a hostile length cannot make us allocate.
pub fn get_len(input: &mut &[u8], min_bytes_each: usize, max: usize) -> Result<usize> {
    let n = get_u64(input)?;
    let n = usize::try_from(n).map_err(|_| Error::Invalid("length too large"))?;
    if n > max {
        return Err(Error::Invalid("length above the format's limit"));
    }
    if n.saturating_mul(min_bytes_each) > input.len() {
        return Err(Error::Truncated);
    }
    Ok(n)
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub fn get_str(input: &mut &[u8], max: usize) -> Result<String> {
    let n = get_len(input, 1, max)?;
    let (s, rest) = input.split_at(n);
    let s = std::str::from_utf8(s).map_err(|_| Error::Invalid("string is not UTF-8"))?;
    *input = rest;
    Ok(s.to_owned())
}

pub fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if input.len() < n {
        return Err(Error::Truncated);
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

pub fn take_array<const N: usize>(input: &mut &[u8]) -> Result<[u8; N]> {
    let s = take(input, N)?;
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    Ok(a)
}

/// A stream name as the envelope and checkpoints carry it: one length byte, then the name.
pub fn take_stream_name(input: &mut &[u8]) -> Result<crate::StreamName> {
    let len = usize::from(take(input, 1)?[0]);
    let name = std::str::from_utf8(take(input, len)?).map_err(|_| Error::Invalid("stream name is not UTF-8"))?;
    crate::StreamName::new(name).map_err(|_| Error::Invalid("invalid stream name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn u64_round_trip(v: u64) {
            let mut buf = Vec::new();
            put_u64(&mut buf, v);
            let mut s = buf.as_slice();
            prop_assert_eq!(get_u64(&mut s)?, v);
            prop_assert!(s.is_empty());
        }

        #[test]
        fn zigzag_round_trip(v: i64) {
            prop_assert_eq!(unzigzag(zigzag(v)), v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let mut s = bytes.as_slice();
            let _ = get_u64(&mut s);
        }
    }

    #[test]
    fn overlong_is_invalid() {
        let bytes = [0xffu8; 11];
        assert!(matches!(get_u64(&mut &bytes[..]), Err(Error::Invalid(_))));
        assert_eq!(get_u64(&mut &[0x80u8][..]), Err(Error::Truncated));
    }
}
