//! Signed retention records: "batches of stream S of device D numbered below
//! `from` were removed on purpose; batch `from − 1` had hash `head`". A store
//! that holds one may lack those batches without a reader calling it a gap,
//! while a batch missing at or above `from` is still one: only the device can
//! sign a record, and it names exactly where the stream now starts.
//!
//! ```text
//! magic "ER" | version 1 | flags 0 | device 16 | stream len 1 + name | from u64
//! | head 32 | before i64 | ts i64 | signer public key 32 | Ed25519 signature 64
//! ```
//! The signature covers "edgeseal/v1/retention" ‖ every byte before the signer key.

use crate::envelope::{Authorship, BatchHash};
use crate::error::{Error, Result};
use crate::id::{DeviceId, StreamName};
use crate::keys::Identity;
use crate::signed::Kind;
use crate::varint::take_array;

const KIND: Kind = Kind {
    magic: *b"ER",
    context: b"edgeseal/v1/retention",
    bad_magic: "not a retention record (bad magic)",
    bad_flags: "unknown retention record flags",
    trailing: "trailing bytes after the retention record",
    not_the_signer: "signer is not the retention record's device",
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub device: DeviceId,
    pub stream: StreamName,
    /// The first batch kept: every batch numbered below it may be gone.
    pub from: u64,
    /// The hash of batch `from − 1`, which batch `from` names as its predecessor.
    pub head: BatchHash,
    /// The removed batches ended before this time (ms since the Unix epoch): what the stream keeps.
    pub before: i64,
    /// When the device signed it (ms since the Unix epoch).
    pub ts: i64,
}

impl Retention {
    fn body(&self) -> Vec<u8> {
        let mut out = KIND.head(self.device, &self.stream, 56);
        out.extend_from_slice(&self.from.to_be_bytes());
        out.extend_from_slice(&self.head.0);
        out.extend_from_slice(&self.before.to_be_bytes());
        out.extend_from_slice(&self.ts.to_be_bytes());
        out
    }

    /// Signs the record with the device's identity.
    pub fn sign(&self, identity: &Identity) -> Result<Vec<u8>> {
        if self.from == 0 {
            return Err(Error::Unencodable("a retention record removes at least batch 0"));
        }
        KIND.sign(identity, self.device, self.body())
    }

    /// Parses a signed record and says who signed it.
    pub fn parse(bytes: &[u8]) -> Result<(Retention, Authorship)> {
        let mut input = bytes;
        let r = &mut input;
        let (device, stream) = KIND.take_head(r)?;
        let from = u64::from_be_bytes(take_array(r)?);
        if from == 0 {
            return Err(Error::Invalid("a retention record from batch 0 removes nothing"));
        }
        let head = BatchHash(take_array(r)?);
        let before = i64::from_be_bytes(take_array(r)?);
        let ts = i64::from_be_bytes(take_array(r)?);
        let by = KIND.take_signature(bytes, r, device)?;
        Ok((Retention { device, stream, from, head, before, ts }, by))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(id: &Identity) -> Retention {
        Retention {
            device: id.device_id(),
            stream: StreamName::new("t").unwrap(),
            from: 42,
            head: BatchHash([5; 32]),
            before: 1_700_000_000_000,
            ts: 1_700_000_100_000,
        }
    }

    #[test]
    fn sign_parse_and_tamper() {
        let id = Identity::from_secret_bytes(&[1; 96]);
        let rec = record(&id);
        let bytes = rec.sign(&id).unwrap();
        assert_eq!(Retention::parse(&bytes).unwrap(), (rec, Authorship::Device));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            if let Ok((_, a)) = Retention::parse(&b) {
                assert_ne!(a, Authorship::Device, "flip at {i}");
            }
        }
    }

    #[test]
    fn only_the_device_signs_and_something_is_removed() {
        let id = Identity::from_secret_bytes(&[1; 96]);
        let other = Identity::from_secret_bytes(&[2; 96]);
        assert!(record(&id).sign(&other).is_err());
        assert!(Retention { from: 0, ..record(&id) }.sign(&id).is_err());
        // Another identity's record about this device parses as foreign.
        let mut forged = record(&other);
        forged.device = id.device_id();
        let mut bytes = forged.body();
        let msg = [KIND.context, &bytes].concat();
        bytes.extend_from_slice(&other.ed25519_public());
        bytes.extend_from_slice(&other.sign(&msg));
        assert!(matches!(Retention::parse(&bytes).unwrap().1, Authorship::Foreign(_)));
        // A checkpoint is not a retention record.
        let cp = crate::checkpoint::Checkpoint {
            device: id.device_id(),
            stream: StreamName::new("t").unwrap(),
            seq: 1,
            head: BatchHash([0; 32]),
            ts: 0,
        }
        .sign(&id)
        .unwrap();
        assert!(Retention::parse(&cp).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = Retention::parse(&bytes);
        }
    }
}
