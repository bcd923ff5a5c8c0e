//! Signed checkpoints: "the head of stream S of device D is batch `seq` with
//! hash H, as of time T". A reader that keeps the highest checkpoint it has
//! seen notices a store that lost its tail or went back to an older state.
//!
//! ```text
//! magic "EC" | version 1 | flags 0 | device 16 | stream len 1 + name | seq u64
//! | head 32 | ts i64 | signer public key 32 | Ed25519 signature 64
//! ```
//! The signature covers "edgeseal/v1/checkpoint" ‖ every byte before the signer key.

use crate::envelope::{Authorship, BatchHash};
use crate::error::{Error, Result};
use crate::id::{DeviceId, StreamName};
use crate::keys::Identity;
use crate::varint::{take, take_array, take_stream_name};

const MAGIC: [u8; 2] = *b"EC";
const CONTEXT: &[u8] = b"edgeseal/v1/checkpoint";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub device: DeviceId,
    pub stream: StreamName,
    pub seq: u64,
    pub head: BatchHash,
    /// When the device signed it, in ms since the Unix epoch.
    pub ts: i64,
}

impl Checkpoint {
    fn body(&self) -> Vec<u8> {
        let s = self.stream.as_str().as_bytes();
        let mut out = Vec::with_capacity(80 + s.len());
        out.extend_from_slice(&MAGIC);
        out.push(1);
        out.push(0);
        out.extend_from_slice(&self.device.0);
        out.push(s.len() as u8);
        out.extend_from_slice(s);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.head.0);
        out.extend_from_slice(&self.ts.to_be_bytes());
        out
    }

    /// Signs the checkpoint with the device's identity.
    pub fn sign(&self, identity: &Identity) -> Result<Vec<u8>> {
        if identity.device_id() != self.device {
            return Err(Error::Unencodable("signer is not the checkpoint's device"));
        }
        let mut out = self.body();
        let msg = [CONTEXT, &out].concat();
        out.extend_from_slice(&identity.ed25519_public());
        out.extend_from_slice(&identity.sign(&msg));
        Ok(out)
    }

    /// Parses a signed checkpoint and says who signed it.
    pub fn parse(bytes: &[u8]) -> Result<(Checkpoint, Authorship)> {
        let mut input = bytes;
        let r = &mut input;
        if take(r, 2)? != MAGIC {
            return Err(Error::Invalid("not a checkpoint (bad magic)"));
        }
        let version = take(r, 1)?[0];
        if version != 1 {
            return Err(Error::UnsupportedVersion(version));
        }
        if take(r, 1)?[0] != 0 {
            return Err(Error::Invalid("unknown checkpoint flags"));
        }
        let device = DeviceId(take_array(r)?);
        let stream = take_stream_name(r)?;
        let seq = u64::from_be_bytes(take_array(r)?);
        let head = BatchHash(take_array(r)?);
        let ts = i64::from_be_bytes(take_array(r)?);
        let body_len = bytes.len() - r.len();
        let pk: [u8; 32] = take_array(r)?;
        let sig: [u8; 64] = take_array(r)?;
        if !r.is_empty() {
            return Err(Error::Invalid("trailing bytes after the checkpoint"));
        }
        let cp = Checkpoint { device, stream, seq, head, ts };
        let msg = [CONTEXT, &bytes[..body_len]].concat();
        Ok((cp, Authorship::of(device, &pk, &msg, &sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sign_parse_and_tamper() {
        let id = Identity::from_secret_bytes(&[1; 96]);
        let cp = Checkpoint {
            device: id.device_id(),
            stream: StreamName::new("t").unwrap(),
            seq: 42,
            head: BatchHash([5; 32]),
            ts: 1_700_000_000_000,
        };
        let bytes = cp.sign(&id).unwrap();
        assert_eq!(Checkpoint::parse(&bytes).unwrap(), (cp, Authorship::Device));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            if let Ok((_, a)) = Checkpoint::parse(&b) {
                assert_ne!(a, Authorship::Device, "flip at {i}");
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = Checkpoint::parse(&bytes);
        }
    }
}
