//! The live frame, version 2 (`docs/format.md` is the normative text; version 1 is still read): the
//! readings a device accepted in one journal commit, sealed and signed for
//! the broker the moment they are accepted. Frames are for watching only:
//! nothing stores them, and every reading in a frame also goes, later, into a
//! stored batch cut at the stream's storage policy. So sharing every reading
//! live costs the store nothing, and a frame lost on the way costs latency,
//! not data.
//!
//! ```text
//! header   magic "EF" | version 2 | suite 1 | device 16 | stream len 1 + name
//!          | pos u64 | first_ts i64 | last_ts i64 | count u32 | epoch u32
//!          | salt 16 | ciphertext len u32                        (integers big-endian)
//! body     ChaCha20-Poly1305(frame key, nonce 0, aad = header, plaintext = codec body)
//! trailer  signer Ed25519 public key 32 | signature 64         (always)
//! ```
//!
//! * frame key = HKDF-SHA256(salt, leaf key of `first_ts`, "edgeseal/v2/frame-key" ‖ device ‖ L ‖ stream ‖ pos ‖ epoch),
//!   as for a batch (version 1: the epoch key and "edgeseal/v1/frame-key")
//! * frame hash = SHA-256("edgeseal/v1/frame" ‖ header ‖ ciphertext)
//! * signature = Ed25519(device key, "edgeseal/v1/frame-sig" ‖ frame hash)
//!
//! Every frame is signed, so a receiver can show it on arrival: it is
//! authentic on its own, with no chain to wait for. `pos` is the position of
//! the frame's first reading in its stream (the device's journal never reuses
//! one), so a receiver refuses a frame that does not move forward.

use ring::aead;

use crate::codec;
use crate::envelope::{Authorship, BatchHash, TAG_LEN, digest, item_key, labelled, zero_nonce};
use crate::error::{Error, Result};
use crate::id::{DeviceId, StreamName};
use crate::keys::{EpochKey, EpochKeys, Identity, TreeNode, slot_of};
use crate::reading::Readings;
use crate::varint::{take, take_array, take_stream_name};

pub const MAGIC: [u8; 2] = *b"EF";
pub const VERSION: u8 = 2;
pub const VERSION_1: u8 = 1;
/// The largest ciphertext a frame may carry: bigger readings (a camera's
/// image) wait for their stored batch.
pub const MAX_CIPHERTEXT: usize = 1 << 20;
const KEY_LABEL: &[u8] = b"edgeseal/v2/frame-key";
const KEY_LABEL_V1: &[u8] = b"edgeseal/v1/frame-key";

/// The clear, authenticated header of a live frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u8,
    pub device: DeviceId,
    pub stream: StreamName,
    /// The stream position of the first reading.
    pub pos: u64,
    pub first_ts: i64,
    pub last_ts: i64,
    pub count: u32,
    pub epoch: u32,
    pub salt: [u8; 16],
}

impl FrameHeader {
    fn encode(&self, ciphertext_len: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(self.version);
        out.push(crate::envelope::SUITE_1);
        out.extend_from_slice(&self.device.0);
        out.push(self.stream.as_str().len() as u8);
        out.extend_from_slice(self.stream.as_str().as_bytes());
        out.extend_from_slice(&self.pos.to_be_bytes());
        out.extend_from_slice(&self.first_ts.to_be_bytes());
        out.extend_from_slice(&self.last_ts.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&ciphertext_len.to_be_bytes());
    }

    /// The frame's AEAD key from what a reader holds of its epoch.
    fn key(&self, keys: &EpochKeys) -> Option<aead::LessSafeKey> {
        let v1 = self.version == VERSION_1;
        let key = keys.for_item(v1, self.first_ts)?;
        let label = if v1 { KEY_LABEL_V1 } else { KEY_LABEL };
        Some(item_key(label, &key, &self.salt, self.device, &self.stream, self.pos, self.epoch))
    }
}

fn sig_message(hash: &BatchHash) -> [u8; 53] {
    labelled::<53>(b"edgeseal/v1/frame-sig", hash)
}

/// Where a frame's readings are: the signer's stream, the position of the
/// first, the key epoch; and fresh random bytes for the frame's key.
#[derive(Debug, Clone)]
pub struct FrameParams {
    pub stream: StreamName,
    pub pos: u64,
    pub epoch: u32,
    pub salt: [u8; 16],
}

/// Encodes, encrypts and signs readings as a live frame of the signer's
/// device. `scratch` is reused between calls.
pub fn seal_frame(
    readings: &Readings,
    at: &FrameParams,
    key: &EpochKey,
    signer: &Identity,
    scratch: &mut Vec<u8>,
) -> Result<Vec<u8>> {
    let (first_ts, last_ts) = readings.time_range().ok_or(Error::Unencodable("a frame needs at least one reading"))?;
    scratch.clear();
    codec::encode(readings, scratch)?;
    let ct_len = scratch.len() + TAG_LEN;
    if ct_len > MAX_CIPHERTEXT {
        return Err(Error::Unencodable("too large for a live frame"));
    }
    let header = FrameHeader {
        version: VERSION,
        device: signer.device_id(),
        stream: at.stream.clone(),
        pos: at.pos,
        first_ts,
        last_ts,
        count: readings.len() as u32,
        epoch: at.epoch,
        salt: at.salt,
    };
    let mut bytes = Vec::with_capacity(128 + ct_len + 96);
    header.encode(ct_len as u32, &mut bytes);
    let header_len = bytes.len();
    let leaf = TreeNode::root(key).leaf(slot_of(first_ts)).ok_or(Error::Unencodable("no leaf key"))?;
    let tag = item_key(KEY_LABEL, &leaf, &header.salt, header.device, &header.stream, header.pos, header.epoch)
        .seal_in_place_separate_tag(zero_nonce(), aead::Aad::from(&bytes[..header_len]), scratch)
        .map_err(|_| Error::Unencodable("encryption failed"))?;
    bytes.extend_from_slice(scratch);
    bytes.extend_from_slice(tag.as_ref());
    let hash = digest(b"edgeseal/v1/frame", &bytes[..header_len], &bytes[header_len..]);
    bytes.extend_from_slice(&signer.ed25519_public());
    bytes.extend_from_slice(&signer.sign(&sig_message(&hash)));
    Ok(bytes)
}

/// A parsed live frame borrowing its bytes; see [`ParsedFrame::authorship`]
/// and [`ParsedFrame::open`].
#[derive(Debug, Clone)]
pub struct ParsedFrame<'a> {
    pub header: FrameHeader,
    header_bytes: &'a [u8],
    ciphertext: &'a [u8],
    signer: &'a [u8; 32],
    signature: &'a [u8; 64],
}

/// Parses a live frame's layout exactly (structure only).
pub fn parse_frame(bytes: &[u8]) -> Result<ParsedFrame<'_>> {
    let mut input = bytes;
    let r = &mut input;
    if take(r, 2)? != MAGIC {
        return Err(Error::Invalid("not a live frame (bad magic)"));
    }
    let version = take(r, 1)?[0];
    if version != VERSION && version != VERSION_1 {
        return Err(Error::UnsupportedVersion(version));
    }
    let suite = take(r, 1)?[0];
    if suite != crate::envelope::SUITE_1 {
        return Err(Error::UnsupportedSuite(suite));
    }
    let device = DeviceId(take_array(r)?);
    let stream = take_stream_name(r)?;
    let pos = u64::from_be_bytes(take_array(r)?);
    let first_ts = i64::from_be_bytes(take_array(r)?);
    let last_ts = i64::from_be_bytes(take_array(r)?);
    let count = u32::from_be_bytes(take_array(r)?);
    let epoch = u32::from_be_bytes(take_array(r)?);
    let salt = take_array(r)?;
    let ct_len = u32::from_be_bytes(take_array(r)?) as usize;
    if first_ts > last_ts || count == 0 {
        return Err(Error::Invalid("frame time range or count is impossible"));
    }
    if !(TAG_LEN..=MAX_CIPHERTEXT).contains(&ct_len) {
        return Err(Error::Invalid("frame ciphertext length out of range"));
    }
    let header_len = bytes.len() - r.len();
    let ciphertext = take(r, ct_len)?;
    let (signer, rest) = r.split_first_chunk::<32>().ok_or(Error::Truncated)?;
    let (signature, rest) = rest.split_first_chunk::<64>().ok_or(Error::Truncated)?;
    if !rest.is_empty() {
        return Err(Error::Invalid("trailing bytes after the live frame"));
    }
    let header = FrameHeader { version, device, stream, pos, first_ts, last_ts, count, epoch, salt };
    Ok(ParsedFrame { header, header_bytes: &bytes[..header_len], ciphertext, signer, signature })
}

impl ParsedFrame<'_> {
    pub fn hash(&self) -> BatchHash {
        digest(b"edgeseal/v1/frame", self.header_bytes, self.ciphertext)
    }

    /// Who signed the frame: [`Authorship::Device`] only when the signature
    /// verifies under the key the header's device id names.
    pub fn authorship(&self) -> Authorship {
        Authorship::of(self.header.device, self.signer, &sig_message(&self.hash()), self.signature)
    }

    /// Decrypts and decodes the body, checking it against the header
    /// ([`Error::NotGranted`] when `keys` do not reach the frame's time).
    pub fn open(&self, keys: &EpochKeys) -> Result<Readings> {
        let mut buf = self.ciphertext.to_vec();
        let plain = self
            .header
            .key(keys)
            .ok_or(Error::NotGranted)?
            .open_in_place(zero_nonce(), aead::Aad::from(self.header_bytes), &mut buf)
            .map_err(|_| Error::CouldNotOpen)?;
        let readings = codec::decode(plain)?;
        if readings.len() != self.header.count as usize
            || readings.time_range() != Some((self.header.first_ts, self.header.last_ts))
        {
            return Err(Error::Invalid("frame body does not match the header's count or time range"));
        }
        Ok(readings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope;
    use crate::reading::ScalarBatch;
    use proptest::prelude::*;

    fn identity(seed: u8) -> Identity {
        Identity::from_secret_bytes(&[seed; 96])
    }

    fn readings() -> Readings {
        Readings::Scalar(ScalarBatch { unit: "°C".into(), ts: vec![1000], values: vec![21.5], labels: vec![] })
    }

    fn at(pos: u64, epoch: u32) -> FrameParams {
        FrameParams { stream: StreamName::new("temperature").unwrap(), pos, epoch, salt: [3; 16] }
    }

    fn frame(id: &Identity) -> Vec<u8> {
        let key = id.epoch_key(&at(0, 2).stream, 2);
        seal_frame(&readings(), &at(41, 2), &key, id, &mut Vec::new()).unwrap()
    }

    #[test]
    fn seal_parse_open() {
        let id = identity(1);
        let b = frame(&id);
        let p = parse_frame(&b).unwrap();
        assert_eq!((p.header.pos, p.header.count, p.header.epoch), (41, 1, 2));
        assert_eq!(p.authorship(), Authorship::Device);
        assert_eq!(p.open(&id.epoch_key(&p.header.stream, 2).into()).unwrap(), readings());
        assert_eq!(p.open(&id.epoch_key(&p.header.stream, 1).into()).unwrap_err(), Error::CouldNotOpen);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let id = identity(1);
        let b = frame(&id);
        let key = id.epoch_key(&StreamName::new("temperature").unwrap(), 2);
        for i in 0..b.len() {
            let mut m = b.clone();
            m[i] ^= 0x40;
            let caught = match parse_frame(&m) {
                Err(_) => true,
                Ok(p) => p.authorship() != Authorship::Device || p.open(&key.clone().into()).is_err(),
            };
            assert!(caught, "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn a_frame_is_never_a_batch_and_a_batch_never_a_frame() {
        let id = identity(1);
        assert!(envelope::parse(&frame(&id)).is_err());
        let stream = StreamName::new("temperature").unwrap();
        let params = envelope::SealParams {
            device: id.device_id(),
            stream: stream.clone(),
            seq: 41,
            epoch: 2,
            prev: BatchHash::default(),
            salt: [3; 16],
            covers: Vec::new(),
        };
        let batch =
            envelope::seal(&readings(), &params, &id.epoch_key(&stream, 2), Some(&id), &mut Vec::new()).unwrap();
        assert!(parse_frame(&batch.bytes).is_err());
    }

    #[test]
    fn a_co_grantee_cannot_sign_for_the_device() {
        // Another holder of the stream key seals a frame and signs it with its own key.
        let (victim, forger) = (identity(1), identity(2));
        let stream = StreamName::new("temperature").unwrap();
        let mut b =
            seal_frame(&readings(), &at(0, 0), &victim.epoch_key(&stream, 0), &forger, &mut Vec::new()).unwrap();
        // Claim the victim's device id in the header: the signature no longer matches.
        b[4..20].copy_from_slice(&victim.device_id().0);
        let p = parse_frame(&b).unwrap();
        assert_ne!(p.authorship(), Authorship::Device);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            if let Ok(p) = parse_frame(&bytes) {
                let _ = p.authorship();
                let _ = p.open(&identity(1).epoch_key(&p.header.stream, p.header.epoch).into());
            }
        }
    }
}
