//! The layout checkpoints and retention records share:
//!
//! ```text
//! magic 2 | version 1 | flags 0 | device 16 | stream len 1 + name | the record's fields
//! | signer public key 32 | Ed25519 signature 64
//! ```
//! The signature covers the record's context label ‖ every byte before the signer key.

use crate::envelope::Authorship;
use crate::error::{Error, Result};
use crate::id::{DeviceId, StreamName};
use crate::keys::Identity;
use crate::varint::{take, take_array, take_stream_name};

/// What tells one kind of record from another, and how its errors read.
pub(crate) struct Kind {
    pub magic: [u8; 2],
    pub context: &'static [u8],
    pub bad_magic: &'static str,
    pub bad_flags: &'static str,
    pub trailing: &'static str,
    pub not_the_signer: &'static str,
}

impl Kind {
    /// The start of a record's body: magic, version 1, flags 0, device, stream.
    pub fn head(&self, device: DeviceId, stream: &StreamName, fields: usize) -> Vec<u8> {
        let s = stream.as_str().as_bytes();
        let mut out = Vec::with_capacity(21 + s.len() + fields);
        out.extend_from_slice(&self.magic);
        out.push(1);
        out.push(0);
        out.extend_from_slice(&device.0);
        out.push(s.len() as u8);
        out.extend_from_slice(s);
        out
    }

    /// `body` signed by `identity`, which must be `device`'s.
    pub fn sign(&self, identity: &Identity, device: DeviceId, mut body: Vec<u8>) -> Result<Vec<u8>> {
        if identity.device_id() != device {
            return Err(Error::Unencodable(self.not_the_signer));
        }
        let msg = [self.context, &body].concat();
        body.extend_from_slice(&identity.ed25519_public());
        body.extend_from_slice(&identity.sign(&msg));
        Ok(body)
    }

    /// Reads the head of a record from `r`: its device and stream.
    pub fn take_head(&self, r: &mut &[u8]) -> Result<(DeviceId, StreamName)> {
        if take(r, 2)? != self.magic {
            return Err(Error::Invalid(self.bad_magic));
        }
        let version = take(r, 1)?[0];
        if version != 1 {
            return Err(Error::UnsupportedVersion(version));
        }
        if take(r, 1)?[0] != 0 {
            return Err(Error::Invalid(self.bad_flags));
        }
        Ok((DeviceId(take_array(r)?), take_stream_name(r)?))
    }

    /// Reads the signer key and signature that end `bytes` (`r` is what is
    /// left after the fields) and says who signed the body before them.
    pub fn take_signature(&self, bytes: &[u8], r: &mut &[u8], device: DeviceId) -> Result<Authorship> {
        let body_len = bytes.len() - r.len();
        let pk: [u8; 32] = take_array(r)?;
        let sig: [u8; 64] = take_array(r)?;
        if !r.is_empty() {
            return Err(Error::Invalid(self.trailing));
        }
        let msg = [self.context, &bytes[..body_len]].concat();
        Ok(Authorship::of(device, &pk, &msg, &sig))
    }
}
