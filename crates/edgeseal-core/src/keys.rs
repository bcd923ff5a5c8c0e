//! Identities and stream keys.
//!
//! An agent's [`Identity`] holds three secrets: an Ed25519 signing key, an
//! X25519 agreement key (for key wrapping to peers) and a *stream root* from
//! which each stream's epoch keys are derived with HKDF-SHA256 (RFC 5869).
//! A peer given the key of epoch `e` cannot derive any other epoch's key, so
//! rotation (a new epoch) needs no re-encryption of old data.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::id::{DeviceId, StreamName};

/// 32 secret bytes that are wiped on drop and never printed.
#[derive(Clone, PartialEq, Eq, Zeroize)]
#[zeroize(drop)]
pub struct SecretBytes([u8; 32]);

impl SecretBytes {
    pub fn new(bytes: [u8; 32]) -> Self {
        SecretBytes(bytes)
    }

    /// The raw bytes. Every use is a place a secret leaves this type.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The symmetric key of one epoch of one stream.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EpochKey(pub SecretBytes);

/// The public half of an identity.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicIdentity {
    pub ed25519: [u8; 32],
    pub x25519: [u8; 32],
}

impl PublicIdentity {
    pub fn device_id(&self) -> DeviceId {
        device_id_of(&self.ed25519)
    }

    /// A short code people can compare aloud: 24 base32 characters in groups of four.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"edgeseal/v1/fingerprint");
        h.update(self.ed25519);
        h.update(self.x25519);
        let digest = h.finalize();
        let code = base32(&digest[..15]);
        code.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).expect("base32 is ASCII"))
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// The device id bound to an Ed25519 public key.
pub fn device_id_of(ed25519_public: &[u8; 32]) -> DeviceId {
    let mut h = Sha256::new();
    h.update(b"edgeseal/v1/device-id");
    h.update(ed25519_public);
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    DeviceId(id)
}

/// Verifies an Ed25519 signature made by `public` over `msg`.
pub fn verify_signature(public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(public) else {
        return false;
    };
    vk.verify(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok()
}

/// An agent's secret identity.
pub struct Identity {
    signing: SigningKey,
    agreement: x25519_dalek::StaticSecret,
    stream_root: SecretBytes,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("device", &self.device_id()).finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds an identity from 96 random bytes (Ed25519 seed, X25519 secret, stream root).
    pub fn from_secret_bytes(secret: &[u8; 96]) -> Self {
        let mut ed = Zeroizing::new([0u8; 32]);
        let mut x = Zeroizing::new([0u8; 32]);
        let mut root = [0u8; 32];
        ed.copy_from_slice(&secret[..32]);
        x.copy_from_slice(&secret[32..64]);
        root.copy_from_slice(&secret[64..]);
        Identity {
            signing: SigningKey::from_bytes(&ed),
            agreement: x25519_dalek::StaticSecret::from(*x),
            stream_root: SecretBytes(root),
        }
    }

    /// The 96 secret bytes, for the keystore only.
    pub fn expose_secret_bytes(&self) -> Zeroizing<[u8; 96]> {
        let mut out = Zeroizing::new([0u8; 96]);
        out[..32].copy_from_slice(&self.signing.to_bytes());
        out[32..64].copy_from_slice(self.agreement.as_bytes());
        out[64..].copy_from_slice(self.stream_root.expose_secret());
        out
    }

    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            ed25519: self.signing.verifying_key().to_bytes(),
            x25519: x25519_dalek::PublicKey::from(&self.agreement).to_bytes(),
        }
    }

    pub fn device_id(&self) -> DeviceId {
        device_id_of(&self.signing.verifying_key().to_bytes())
    }

    pub fn ed25519_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The X25519 secret, for key wrapping (HPKE) only.
    pub(crate) fn agreement_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.agreement.to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// The key of `epoch` of `stream` (HKDF-SHA256, RFC 5869 §2).
    pub fn epoch_key(&self, stream: &StreamName, epoch: u32) -> EpochKey {
        let hk = Hkdf::<Sha256>::new(None, self.stream_root.expose_secret());
        let mut info = Vec::with_capacity(64 + stream.as_str().len());
        info.extend_from_slice(b"edgeseal/v1/epoch-key");
        info.extend_from_slice(&self.device_id().0);
        info.extend_from_slice(&epoch.to_be_bytes());
        info.extend_from_slice(stream.as_str().as_bytes());
        let mut okm = [0u8; 32];
        hk.expand(&info, &mut okm).expect("32 bytes is a valid HKDF-SHA256 length");
        let key = EpochKey(SecretBytes(okm));
        okm.zeroize();
        key
    }
}

/// RFC 4648 base32 with Crockford's lower-case alphabet (no i, l, o, u).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut acc: u32 = 0;
    let mut nbits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            out.push(ALPHABET[((acc >> nbits) & 31) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(ALPHABET[((acc << (5 - nbits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(seed: u8) -> Identity {
        Identity::from_secret_bytes(&[seed; 96])
    }

    #[test]
    fn debug_never_shows_secrets() {
        let id = identity(1);
        let stream = StreamName::new("t").unwrap();
        let text = format!("{id:?} {:?}", id.epoch_key(&stream, 0));
        assert!(text.contains("[redacted]"));
        assert!(!text.contains("0101"));
    }

    #[test]
    fn epoch_keys_differ_by_epoch_stream_and_device() {
        let s = StreamName::new("t").unwrap();
        let u = StreamName::new("u").unwrap();
        let a = identity(1);
        assert_ne!(a.epoch_key(&s, 0), a.epoch_key(&s, 1));
        assert_ne!(a.epoch_key(&s, 0), a.epoch_key(&u, 0));
        assert_ne!(a.epoch_key(&s, 0), identity(2).epoch_key(&s, 0));
        assert_eq!(a.epoch_key(&s, 3), identity(1).epoch_key(&s, 3));
    }

    #[test]
    fn fingerprint_shape() {
        let fp = identity(1).public().fingerprint();
        assert_eq!(fp.len(), 29, "{fp}");
        assert_eq!(fp.split('-').count(), 6);
    }

    #[test]
    fn secret_bytes_round_trip() {
        let a = identity(9);
        let b = Identity::from_secret_bytes(&a.expose_secret_bytes());
        assert_eq!(a.public(), b.public());
    }
}
