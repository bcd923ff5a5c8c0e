//! Block bit packing: unsigned integers in blocks of [`BLOCK`], each block
//! prefixed by one byte holding the bit width of its largest value. A block of
//! zeros (a steady sampling rate, an unchanged value) costs one byte.

use crate::error::{Error, Result};

pub const BLOCK: usize = 128;

pub fn pack(values: &[u64], out: &mut Vec<u8>) {
    for block in values.chunks(BLOCK) {
        let max = block.iter().fold(0u64, |a, &v| a | v);
        let width = 64 - max.leading_zeros();
        out.push(width as u8);
        if width == 0 {
            continue;
        }
        let mut acc: u128 = 0;
        let mut nbits: u32 = 0;
        for &v in block {
            acc |= u128::from(v) << nbits;
            nbits += width;
            if nbits >= 64 {
                out.extend_from_slice(&(acc as u64).to_le_bytes());
                acc >>= 64;
                nbits -= 64;
            }
        }
        let tail = nbits.div_ceil(8) as usize;
        out.extend_from_slice(&(acc as u64).to_le_bytes()[..tail]);
    }
}

/// Unpacks `n` values written by [`pack`], appending them to `out`.
pub fn unpack(input: &mut &[u8], n: usize, out: &mut Vec<u64>) -> Result<()> {
    let mut left = n;
    while left > 0 {
        let count = left.min(BLOCK);
        let (&width, rest) = input.split_first().ok_or(Error::Truncated)?;
        *input = rest;
        let width = u32::from(width);
        if width > 64 {
            return Err(Error::Invalid("bit width above 64"));
        }
        if width == 0 {
            out.extend(std::iter::repeat_n(0, count));
            left -= count;
            continue;
        }
        let nbytes = (count * width as usize).div_ceil(8);
        if input.len() < nbytes {
            return Err(Error::Truncated);
        }
        let (data, rest) = input.split_at(nbytes);
        *input = rest;
        let mask: u64 = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
        let mut acc: u128 = 0;
        let mut nbits: u32 = 0;
        let mut pos = 0usize;
        for _ in 0..count {
            while nbits < width {
                if pos + 8 <= data.len() {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&data[pos..pos + 8]);
                    acc |= u128::from(u64::from_le_bytes(w)) << nbits;
                    pos += 8;
                    nbits += 64;
                } else {
                    acc |= u128::from(data[pos]) << nbits;
                    pos += 1;
                    nbits += 8;
                }
            }
            out.push((acc as u64) & mask);
            acc >>= width;
            nbits -= width;
        }
        left -= count;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(values in proptest::collection::vec(any::<u64>().prop_map(|v| v >> (v % 64)), 0..700)) {
            let mut buf = Vec::new();
            pack(&values, &mut buf);
            let mut s = buf.as_slice();
            let mut out = Vec::new();
            unpack(&mut s, values.len(), &mut out)?;
            prop_assert_eq!(out, values);
            prop_assert!(s.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>, n in 0usize..1000) {
            let mut s = bytes.as_slice();
            let mut out = Vec::new();
            let _ = unpack(&mut s, n, &mut out);
        }
    }

    #[test]
    fn zeros_cost_one_byte_per_block() {
        let mut buf = Vec::new();
        pack(&[0; 1000], &mut buf);
        assert_eq!(buf.len(), 1000usize.div_ceil(BLOCK));
    }
}
