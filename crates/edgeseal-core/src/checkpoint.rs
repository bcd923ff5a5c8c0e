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
use crate::error::Result;
use crate::id::{DeviceId, StreamName};
use crate::keys::Identity;
use crate::signed::Kind;
use crate::varint::take_array;

const KIND: Kind = Kind {
    magic: *b"EC",
    context: b"edgeseal/v1/checkpoint",
    bad_magic: "not a checkpoint (bad magic)",
    bad_flags: "unknown checkpoint flags",
    trailing: "trailing bytes after the checkpoint",
    not_the_signer: "signer is not the checkpoint's device",
};

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
    /// Signs the checkpoint with the device's identity.
    pub fn sign(&self, identity: &Identity) -> Result<Vec<u8>> {
        let mut out = KIND.head(self.device, &self.stream, 48);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.head.0);
        out.extend_from_slice(&self.ts.to_be_bytes());
        KIND.sign(identity, self.device, out)
    }

    /// Parses a signed checkpoint and says who signed it.
    pub fn parse(bytes: &[u8]) -> Result<(Checkpoint, Authorship)> {
        let mut input = bytes;
        let r = &mut input;
        let (device, stream) = KIND.take_head(r)?;
        let seq = u64::from_be_bytes(take_array(r)?);
        let head = BatchHash(take_array(r)?);
        let ts = i64::from_be_bytes(take_array(r)?);
        let by = KIND.take_signature(bytes, r, device)?;
        Ok((Checkpoint { device, stream, seq, head, ts }, by))
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
