//! The sealed batch, format version 2 (`docs/format.md` is the normative
//! text); version 1 is still read.
//!
//! ```text
//! header   magic "ES" | version 2 | suite 1 | flags | device 16 | stream len 1 + name
//!          | seq u64 | first_ts i64 | last_ts i64 | count u32 | epoch u32
//!          | prev_hash 32 | salt 16 | covers u16 | covers × hash 32
//!          | ciphertext len u32                                   (integers big-endian)
//! body     ChaCha20-Poly1305(batch key, nonce 0, aad = header, plaintext = codec body)
//! trailer  (if flags & SIGNED) signer Ed25519 public key 32 | signature 64
//! ```
//!
//! Version 1 has no `covers` field, and its batch key comes from the epoch
//! key itself with the label "edgeseal/v1/batch-key".
//!
//! * batch key = HKDF-SHA256(salt = header salt, ikm = the key of leaf
//!   `first_ts` of the epoch's key tree ([`crate::keys::TreeNode`]),
//!   info = "edgeseal/v2/batch-key" ‖ device ‖ stream len ‖ stream ‖ seq ‖ epoch)
//!   (RFC 5869). A grant of a time range hands over the few tree nodes that
//!   hold it, so a peer opens the batches that begin in it and no other.
//!   The random salt makes every batch key unique even when a
//!   sequence number is reused after a crash, so the fixed nonce never repeats
//!   under one key (RFC 8439 §2.8 requires a unique nonce per key).
//! * batch hash = SHA-256("edgeseal/v1/batch" ‖ header ‖ ciphertext): the
//!   value the next batch names as `prev_hash` and checkpoints name as head.
//! * signature = Ed25519(device key, "edgeseal/v1/batch-sig" ‖ batch hash)
//!   (RFC 8032). The header's device id must be the hash of the signer key.
//! * covers: a signed batch lists the hashes of the `n` batches just before
//!   it (`seq - n ..= seq - 1`, oldest first), so each of them is authentic
//!   on its own: a lost or altered neighbour costs only itself. Unsigned
//!   batches cover nothing (`n` = 0).

use hkdf::Hkdf;
use ring::aead;
use sha2::{Digest, Sha256};

use crate::codec;
use crate::error::{Error, Result};
use crate::id::{DeviceId, StreamName};
use crate::keys::{EpochKey, EpochKeys, Identity, LeafCache, device_id_of, slot_of, verify_signature};
use crate::reading::Readings;
use crate::varint::{take, take_array, take_stream_name};

pub const MAGIC: [u8; 2] = *b"ES";
/// The version this build seals; it reads [`VERSION_1`] too.
pub const VERSION: u8 = 2;
pub const VERSION_1: u8 = 1;
/// ChaCha20-Poly1305 + HKDF-SHA256 + Ed25519 + SHA-256.
pub const SUITE_1: u8 = 1;
pub const FLAG_SIGNED: u8 = 0x01;
pub(crate) const TAG_LEN: usize = 16;
const TRAILER_LEN: usize = 32 + 64;
/// Largest ciphertext accepted (a batch of large blobs).
pub const MAX_CIPHERTEXT: usize = 256 << 20;
/// Most batch hashes one signed batch may cover.
pub const MAX_COVERS: usize = 4096;

/// A 32-byte SHA-256 batch hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BatchHash(pub [u8; 32]);

impl std::fmt::Debug for BatchHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BatchHash({})", hex::encode(&self.0[..8]))
    }
}

impl std::fmt::Display for BatchHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The clear, authenticated header of a sealed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// [`VERSION`] or [`VERSION_1`].
    pub version: u8,
    pub flags: u8,
    pub device: DeviceId,
    pub stream: StreamName,
    pub seq: u64,
    pub first_ts: i64,
    pub last_ts: i64,
    pub count: u32,
    pub epoch: u32,
    pub prev: BatchHash,
    pub salt: [u8; 16],
    /// The hashes of the batches just before this one, which its signature vouches for (v2).
    pub covers: Vec<BatchHash>,
}

impl Header {
    fn encode(&self, ciphertext_len: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(self.version);
        out.push(SUITE_1);
        out.push(self.flags);
        out.extend_from_slice(&self.device.0);
        out.push(self.stream.as_str().len() as u8);
        out.extend_from_slice(self.stream.as_str().as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.first_ts.to_be_bytes());
        out.extend_from_slice(&self.last_ts.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.prev.0);
        out.extend_from_slice(&self.salt);
        if self.version >= VERSION {
            out.extend_from_slice(&(self.covers.len() as u16).to_be_bytes());
            for h in &self.covers {
                out.extend_from_slice(&h.0);
            }
        }
        out.extend_from_slice(&ciphertext_len.to_be_bytes());
    }

    /// The batch `seq` this header vouches for, if it covers it.
    pub fn covered(&self, seq: u64) -> Option<&BatchHash> {
        let back = self.seq.checked_sub(seq)?;
        let n = self.covers.len() as u64;
        (back >= 1 && back <= n).then(|| &self.covers[(n - back) as usize])
    }

    /// The key this batch is sealed under, from what a reader holds of its epoch.
    pub fn key_from(&self, keys: &EpochKeys) -> Option<EpochKey> {
        keys.for_item(self.version == VERSION_1, self.first_ts)
    }
}

/// What the sealer supplies besides the readings and keys.
#[derive(Debug, Clone)]
pub struct SealParams {
    pub device: DeviceId,
    pub stream: StreamName,
    pub seq: u64,
    pub epoch: u32,
    pub prev: BatchHash,
    /// Fresh random bytes for every batch.
    pub salt: [u8; 16],
    /// The hashes of the batches just before this one (signed batches only).
    pub covers: Vec<BatchHash>,
}

/// A sealed batch: its bytes and hash.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub bytes: Vec<u8>,
    pub hash: BatchHash,
    pub header: Header,
}

/// Encodes, encrypts and (when `signer` is given) signs one batch under
/// `epoch_key`. `scratch` is reused between calls to avoid allocations.
pub fn seal(
    readings: &Readings,
    params: &SealParams,
    epoch_key: &EpochKey,
    signer: Option<&Identity>,
    scratch: &mut Vec<u8>,
) -> Result<Sealed> {
    seal_with(readings, params, &mut LeafCache::new(epoch_key), signer, scratch)
}

/// [`seal`] with the epoch's leaf keys from `keys`, which a sealer keeps
/// between the batches of a stream.
pub fn seal_with(
    readings: &Readings,
    params: &SealParams,
    keys: &mut LeafCache,
    signer: Option<&Identity>,
    scratch: &mut Vec<u8>,
) -> Result<Sealed> {
    let (first_ts, last_ts) = readings.time_range().ok_or(Error::Unencodable("a batch needs at least one reading"))?;
    if let Some(s) = signer
        && s.device_id() != params.device
    {
        return Err(Error::Unencodable("signer is not the batch's device"));
    }
    if params.covers.len() > MAX_COVERS || (signer.is_none() && !params.covers.is_empty()) {
        return Err(Error::Unencodable("only a signed batch covers others, at most 4096"));
    }
    if params.covers.len() as u64 > params.seq {
        return Err(Error::Unencodable("a batch cannot cover batches before the stream's first"));
    }
    scratch.clear();
    codec::encode(readings, scratch)?;
    let ct_len = scratch.len() + TAG_LEN;
    if ct_len > MAX_CIPHERTEXT {
        return Err(Error::Unencodable("batch too large"));
    }
    let header = Header {
        version: VERSION,
        flags: if signer.is_some() { FLAG_SIGNED } else { 0 },
        device: params.device,
        stream: params.stream.clone(),
        seq: params.seq,
        first_ts,
        last_ts,
        count: readings.len() as u32,
        epoch: params.epoch,
        prev: params.prev,
        salt: params.salt,
        covers: params.covers.clone(),
    };
    let mut bytes = Vec::with_capacity(128 + 32 * header.covers.len() + ct_len + TRAILER_LEN);
    header.encode(ct_len as u32, &mut bytes);
    let header_len = bytes.len();
    let leaf = keys.leaf(slot_of(first_ts));
    let key = item_key(BATCH_KEY, &leaf, &header.salt, header.device, &header.stream, header.seq, header.epoch);
    let tag = key
        .seal_in_place_separate_tag(zero_nonce(), aead::Aad::from(&bytes[..header_len]), scratch)
        .map_err(|_| Error::Unencodable("encryption failed"))?;
    bytes.extend_from_slice(scratch);
    bytes.extend_from_slice(tag.as_ref());
    let hash = hash_parts(&bytes[..header_len], &bytes[header_len..]);
    if let Some(s) = signer {
        bytes.extend_from_slice(&s.ed25519_public());
        bytes.extend_from_slice(&s.sign(&sig_message(&hash)));
    }
    Ok(Sealed { bytes, hash, header })
}

/// Who signed a batch, as far as the bytes alone can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorship {
    /// Signed by the key the header's device id names.
    Device,
    /// A valid signature, but by another identity than the header's device.
    Foreign(DeviceId),
    /// Signed, but the signature does not verify: the bytes were altered.
    BadSignature,
    /// Not signed; authentic only if a signed batch or checkpoint covers it through the chain.
    Unsigned,
}

impl Authorship {
    /// Who signed `msg`: `claimed` must be the device id of the signer key `pk`.
    pub fn of(claimed: DeviceId, pk: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Authorship {
        if !verify_signature(pk, msg, sig) {
            return Authorship::BadSignature;
        }
        let signer = device_id_of(pk);
        if signer == claimed { Authorship::Device } else { Authorship::Foreign(signer) }
    }
}

/// A parsed, not yet opened, sealed batch borrowing its bytes.
#[derive(Debug, Clone)]
pub struct Parsed<'a> {
    pub header: Header,
    header_bytes: &'a [u8],
    ciphertext: &'a [u8],
    signature: Option<(&'a [u8; 32], &'a [u8; 64])>,
}

/// Parses the layout of a sealed batch. Checks structure only; see
/// [`Parsed::authorship`] and [`Parsed::open`] for authenticity.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>> {
    let mut input = bytes;
    let r = &mut input;
    if take(r, 2)? != MAGIC {
        return Err(Error::Invalid("not a sealed batch (bad magic)"));
    }
    let version = take(r, 1)?[0];
    if version != VERSION && version != VERSION_1 {
        return Err(Error::UnsupportedVersion(version));
    }
    let suite = take(r, 1)?[0];
    if suite != SUITE_1 {
        return Err(Error::UnsupportedSuite(suite));
    }
    let flags = take(r, 1)?[0];
    if flags & !FLAG_SIGNED != 0 {
        return Err(Error::Invalid("unknown flags"));
    }
    let device = DeviceId(take_array(r)?);
    let stream = take_stream_name(r)?;
    let seq = u64::from_be_bytes(take_array(r)?);
    let first_ts = i64::from_be_bytes(take_array(r)?);
    let last_ts = i64::from_be_bytes(take_array(r)?);
    let count = u32::from_be_bytes(take_array(r)?);
    let epoch = u32::from_be_bytes(take_array(r)?);
    let prev = BatchHash(take_array(r)?);
    let salt = take_array(r)?;
    let mut covers = Vec::new();
    if version == VERSION {
        let n = usize::from(u16::from_be_bytes(take_array(r)?));
        if n > MAX_COVERS || (flags & FLAG_SIGNED == 0 && n > 0) || n as u64 > seq {
            return Err(Error::Invalid("covers more batches than it may"));
        }
        covers.reserve_exact(n);
        for _ in 0..n {
            covers.push(BatchHash(take_array(r)?));
        }
    }
    let ct_len = u32::from_be_bytes(take_array(r)?) as usize;
    if first_ts > last_ts || count == 0 {
        return Err(Error::Invalid("header time range or count is impossible"));
    }
    if !(TAG_LEN..=MAX_CIPHERTEXT).contains(&ct_len) {
        return Err(Error::Invalid("ciphertext length out of range"));
    }
    let header_len = bytes.len() - r.len();
    let ciphertext = take(r, ct_len)?;
    let signature = if flags & FLAG_SIGNED != 0 {
        let (pk, rest) = r.split_first_chunk::<32>().ok_or(Error::Truncated)?;
        let (sig, rest) = rest.split_first_chunk::<64>().ok_or(Error::Truncated)?;
        *r = rest;
        Some((pk, sig))
    } else {
        None
    };
    if !r.is_empty() {
        return Err(Error::Invalid("trailing bytes after the sealed batch"));
    }
    let header = Header { version, flags, device, stream, seq, first_ts, last_ts, count, epoch, prev, salt, covers };
    Ok(Parsed { header, header_bytes: &bytes[..header_len], ciphertext, signature })
}

impl Parsed<'_> {
    pub fn hash(&self) -> BatchHash {
        hash_parts(self.header_bytes, self.ciphertext)
    }

    /// Whether the batch carries a signature (valid or not).
    pub fn is_signed(&self) -> bool {
        self.signature.is_some()
    }

    /// [`Parsed::authorship`] of many batches (each with its hash), their signatures checked together.
    pub fn authorships(batches: &[(&Parsed<'_>, &BatchHash)]) -> Vec<Authorship> {
        let signed: Vec<usize> = (0..batches.len()).filter(|&i| batches[i].0.signature.is_some()).collect();
        let messages: Vec<[u8; 53]> = signed.iter().map(|&i| sig_message(batches[i].1)).collect();
        let items: Vec<(&[u8; 32], &[u8], &[u8; 64])> = signed
            .iter()
            .zip(&messages)
            .filter_map(|(&i, m)| batches[i].0.signature.map(|(pk, sig)| (pk, &m[..], sig)))
            .collect();
        let mut out = vec![Authorship::Unsigned; batches.len()];
        for ((&i, (pk, ..)), ok) in signed.iter().zip(&items).zip(crate::keys::verify_signatures(&items)) {
            out[i] = match ok {
                false => Authorship::BadSignature,
                true => match crate::keys::device_id_of(pk) {
                    d if d == batches[i].0.header.device => Authorship::Device,
                    d => Authorship::Foreign(d),
                },
            };
        }
        out
    }

    /// Checks the signature given the batch's hash.
    pub fn authorship(&self, hash: &BatchHash) -> Authorship {
        match self.signature {
            None => Authorship::Unsigned,
            Some((pk, sig)) => Authorship::of(self.header.device, pk, &sig_message(hash), sig),
        }
    }

    /// Decrypts and decodes the body, checking it against the header. `keys`
    /// is what the reader holds of the batch's epoch; [`Error::NotGranted`]
    /// when that does not reach the batch's time.
    pub fn open(&self, keys: &EpochKeys) -> Result<Readings> {
        let h = &self.header;
        let key = h.key_from(keys).ok_or(Error::NotGranted)?;
        let label = if h.version == VERSION_1 { BATCH_KEY_V1 } else { BATCH_KEY };
        let mut buf = self.ciphertext.to_vec();
        let plain = item_key(label, &key, &h.salt, h.device, &h.stream, h.seq, h.epoch)
            .open_in_place(zero_nonce(), aead::Aad::from(self.header_bytes), &mut buf)
            .map_err(|_| Error::CouldNotOpen)?;
        let readings = codec::decode(plain)?;
        let range = readings.time_range();
        if readings.len() != self.header.count as usize || range != Some((self.header.first_ts, self.header.last_ts)) {
            return Err(Error::Invalid("body does not match the header's count or time range"));
        }
        Ok(readings)
    }
}

fn hash_parts(header: &[u8], ciphertext: &[u8]) -> BatchHash {
    digest(b"edgeseal/v1/batch", header, ciphertext)
}

/// SHA-256 of `label ‖ header ‖ ciphertext`: a batch's or a live frame's hash.
pub(crate) fn digest(label: &[u8], header: &[u8], ciphertext: &[u8]) -> BatchHash {
    let mut h = Sha256::new();
    h.update(label);
    h.update(header);
    h.update(ciphertext);
    BatchHash(h.finalize().into())
}

fn sig_message(hash: &BatchHash) -> [u8; 53] {
    labelled::<53>(b"edgeseal/v1/batch-sig", hash)
}

/// `label ‖ hash` in a fixed array of `N` = label length + 32 bytes.
pub(crate) fn labelled<const N: usize>(label: &[u8], hash: &BatchHash) -> [u8; N] {
    let mut m = [0u8; N];
    m[..N - 32].copy_from_slice(label);
    m[N - 32..].copy_from_slice(&hash.0);
    m
}

const BATCH_KEY: &[u8] = b"edgeseal/v2/batch-key";
const BATCH_KEY_V1: &[u8] = b"edgeseal/v1/batch-key";

/// The one-use AEAD key of a batch (`label` = "edgeseal/v2/batch-key") or a
/// live frame: HKDF-SHA256(salt, key, label ‖ device ‖ L ‖ stream ‖ number ‖ epoch),
/// where `key` is the leaf key of the item's first time (the epoch key in version 1).
pub(crate) fn item_key(
    label: &[u8],
    epoch_key: &EpochKey,
    salt: &[u8; 16],
    device: DeviceId,
    stream: &StreamName,
    number: u64,
    epoch: u32,
) -> aead::LessSafeKey {
    let hk = Hkdf::<Sha256>::new(Some(salt), epoch_key.0.expose_secret());
    let stream = stream.as_str().as_bytes();
    let mut info = Vec::with_capacity(64 + stream.len());
    info.extend_from_slice(label);
    info.extend_from_slice(&device.0);
    info.push(stream.len() as u8);
    info.extend_from_slice(stream);
    info.extend_from_slice(&number.to_be_bytes());
    info.extend_from_slice(&epoch.to_be_bytes());
    let mut okm = zeroize::Zeroizing::new([0u8; 32]);
    hk.expand(&info, okm.as_mut()).expect("32 bytes is a valid HKDF-SHA256 length");
    aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, okm.as_ref()).expect("32-byte key"))
}

/// Every batch key is used once (fresh salt), so the nonce may be constant.
pub(crate) fn zero_nonce() -> aead::Nonce {
    aead::Nonce::assume_unique_for_key([0u8; 12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::ScalarBatch;
    use proptest::prelude::*;

    fn identity(seed: u8) -> Identity {
        Identity::from_secret_bytes(&[seed; 96])
    }

    fn readings() -> Readings {
        Readings::Scalar(ScalarBatch {
            unit: "°C".into(),
            ts: vec![1000, 2000, 3000],
            values: vec![21.5, 21.6, 21.4],
            labels: vec![],
        })
    }

    #[test]
    fn signatures_checked_together_say_what_each_one_checked_alone_says() {
        let (id, other) = (identity(1), identity(2));
        let mut all: Vec<Vec<u8>> = (0..6).map(|_| sealed(&id, Some(&id)).bytes).collect();
        all.push(sealed(&id, None).bytes);
        all.push(sealed(&other, Some(&other)).bytes);
        for bad in [false, true] {
            let mut batch = all.clone();
            if bad {
                // One altered signature, and one batch of this device signed by another key.
                let n = batch[2].len();
                batch[2][n - 1] ^= 1;
                let mut forged = sealed(&id, None).bytes;
                forged[4] = FLAG_SIGNED;
                let hash = parse(&[&forged[..], &[0u8; 96]].concat()).unwrap().hash();
                forged.extend_from_slice(&other.ed25519_public());
                forged.extend_from_slice(&other.sign(&sig_message(&hash)));
                batch.push(forged);
            }
            let parsed: Vec<Parsed<'_>> = batch.iter().map(|b| parse(b).unwrap()).collect();
            let hashes: Vec<BatchHash> = parsed.iter().map(Parsed::hash).collect();
            let pairs: Vec<(&Parsed<'_>, &BatchHash)> = parsed.iter().zip(&hashes).collect();
            let alone: Vec<Authorship> = pairs.iter().map(|(p, h)| p.authorship(h)).collect();
            assert_eq!(Parsed::authorships(&pairs), alone);
            assert_eq!(alone.contains(&Authorship::BadSignature), bad);
            assert_eq!(alone.iter().any(|a| matches!(a, Authorship::Foreign(_))), bad);
        }
    }

    fn sealed(id: &Identity, signer: Option<&Identity>) -> Sealed {
        let stream = StreamName::new("temperature").unwrap();
        let params = SealParams {
            device: id.device_id(),
            stream: stream.clone(),
            seq: 7,
            epoch: 2,
            prev: BatchHash([1; 32]),
            salt: [2; 16],
            covers: Vec::new(),
        };
        seal(&readings(), &params, &id.epoch_key(&stream, 2), signer, &mut Vec::new()).unwrap()
    }

    #[test]
    fn seal_parse_open() {
        let id = identity(1);
        let s = sealed(&id, Some(&id));
        let p = parse(&s.bytes).unwrap();
        assert_eq!(p.header, s.header);
        assert_eq!(p.hash(), s.hash);
        assert_eq!(p.authorship(&s.hash), Authorship::Device);
        let key = id.epoch_key(&p.header.stream, 2);
        assert_eq!(p.open(&key.clone().into()).unwrap(), readings());
        let wrong = id.epoch_key(&p.header.stream, 3);
        assert_eq!(p.open(&wrong.into()).unwrap_err(), Error::CouldNotOpen);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let id = identity(1);
        let s = sealed(&id, Some(&id));
        let key = id.epoch_key(&StreamName::new("temperature").unwrap(), 2);
        for i in 0..s.bytes.len() {
            let mut b = s.bytes.clone();
            b[i] ^= 0x40;
            let caught = match parse(&b) {
                Err(_) => true,
                Ok(p) => p.authorship(&p.hash()) != Authorship::Device || p.open(&key.clone().into()).is_err(),
            };
            assert!(caught, "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn foreign_signer_is_named() {
        let victim = identity(1);
        let forger = identity(2);
        // The forger knows the stream key (a peer) and claims the victim's device id.
        let stream = StreamName::new("temperature").unwrap();
        let params = SealParams {
            device: victim.device_id(),
            stream: stream.clone(),
            seq: 1,
            epoch: 0,
            prev: BatchHash::default(),
            salt: [0; 16],
            covers: Vec::new(),
        };
        let key = victim.epoch_key(&stream, 0);
        assert!(seal(&readings(), &params, &key, Some(&forger), &mut Vec::new()).is_err());
        let unsigned = seal(&readings(), &params, &key, None, &mut Vec::new()).unwrap();
        // Append the forger's own signature over the hash.
        let mut b = unsigned.bytes.clone();
        b[4] = FLAG_SIGNED;
        let p = parse(&[&b[..], &[0u8; 96]].concat()).map(|p| p.hash()).unwrap();
        b.extend_from_slice(&forger.ed25519_public());
        b.extend_from_slice(&forger.sign(&sig_message(&p)));
        let parsed = parse(&b).unwrap();
        assert_eq!(parsed.authorship(&parsed.hash()), Authorship::Foreign(forger.device_id()));
    }

    #[test]
    fn unsigned_batches_parse() {
        let id = identity(1);
        let s = sealed(&id, None);
        let p = parse(&s.bytes).unwrap();
        assert_eq!(p.authorship(&s.hash), Authorship::Unsigned);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            if let Ok(p) = parse(&bytes) {
                let h = p.hash();
                let _ = p.authorship(&h);
                let _ = p.open(&identity(1).epoch_key(&p.header.stream, p.header.epoch).into());
            }
        }

        #[test]
        fn mutated_batches_never_panic(pos in 0usize..400, val: u8, cut in 0usize..400) {
            let id = identity(1);
            let mut b = sealed(&id, Some(&id)).bytes;
            let n = b.len();
            b[pos % n] = val;
            b.truncate(n - cut % n);
            if let Ok(p) = parse(&b) {
                let _ = p.open(&id.epoch_key(&p.header.stream, p.header.epoch).into());
            }
        }
    }
}
