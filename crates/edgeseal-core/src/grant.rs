//! Grants: the keys of a stream's time range wrapped to one peer and signed by the owner.
//!
//! The keys are encrypted with HPKE (RFC 9180) in *auth* mode
//! (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305): only the
//! peer's X25519 key opens them, and opening proves the owner's X25519 key
//! made them. The owner's Ed25519 signature covers the whole grant, so the
//! broker that carries it (retained, for peers that are offline) cannot alter,
//! re-address or forge one. A grant lists every key the peer holds for the
//! stream and replaces the previous grant; a grant with no keys is a
//! revocation: the peer keeps what it had but gets nothing sealed afterwards.
//!
//! The keys are nodes of each epoch's key tree ([`crate::keys::TreeNode`]):
//! the few that hold exactly the time range `from..=to`, so the peer opens
//! batches that begin in the range and nothing before or after it.
//!
//! Layout (version 2): `b"EG"`, version 2, owner Ed25519 key (32), peer
//! device (16), stream (length byte + bytes), issued, from and to (i64 BE,
//! Unix ms), HPKE encapsulated key (32), ciphertext length (u32 BE) and
//! ciphertext of `n × (epoch u32 BE ‖ depth u8 ‖ index u48 BE ‖ key 32)`,
//! then the Ed25519 signature (64) over `"edgeseal/v1/grant-sig" ‖`
//! everything before it. Version 1 (still read) has no `to`, a u16 length
//! and whole epoch keys: `n × (epoch u32 BE ‖ key 32)`.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::rand_core::CryptoRng;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::id::{DeviceId, StreamName};
use crate::keys::{
    EpochKey, Identity, PublicIdentity, SecretBytes, TREE_DEPTH, TreeNode, device_id_of, verify_signature,
};

const MAGIC: &[u8; 2] = b"EG";
const VERSION: u8 = 2;
const VERSION_1: u8 = 1;
/// Most tree nodes in one grant (about 100 epochs of an open-ended range).
const MAX_NODES: usize = 8192;
const NODE_LEN: usize = 4 + 1 + 6 + 32;
const INFO: &[u8] = b"edgeseal/v1/grant";
const SIG_DOMAIN: &[u8] = b"edgeseal/v1/grant-sig";

type KemT = X25519HkdfSha256;

/// The clear part of a grant: who gives what to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantInfo {
    pub owner: DeviceId,
    pub owner_ed25519: [u8; 32],
    pub peer: DeviceId,
    pub stream: StreamName,
    /// When the owner issued it (Unix ms): a later grant replaces an earlier one.
    pub issued_ms: i64,
    /// Batches that begin before this time are not part of the grant (Unix ms).
    pub from_ms: i64,
    /// Nor those that begin after this one (`i64::MAX`: no end).
    pub to_ms: i64,
}

/// An opened grant.
#[derive(Debug)]
pub struct Grant {
    pub info: GrantInfo,
    /// (epoch, node of its key tree).
    pub keys: Vec<(u32, TreeNode)>,
}

impl Grant {
    /// A grant with no keys revokes the peer.
    pub fn is_revocation(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The nodes of `epoch_key`'s tree that hold exactly the batches beginning
/// in `from_ms..=to_ms`.
pub fn range_nodes(epoch_key: &EpochKey, from_ms: i64, to_ms: i64) -> Vec<TreeNode> {
    let root = TreeNode::root(epoch_key);
    let (from, to) = (crate::keys::slot_of(from_ms), crate::keys::slot_of(to_ms));
    crate::keys::cover(from, to).into_iter().filter_map(|(d, i)| root.descend(d, i)).collect()
}

/// What a grant says in the clear besides who issues it.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    pub issued_ms: i64,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// Issues a grant of `keys` (epoch, tree node) of `stream` to `peer`.
pub fn issue(
    owner: &Identity,
    peer: &PublicIdentity,
    stream: &StreamName,
    terms: Terms,
    keys: &[(u32, TreeNode)],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, Error> {
    if keys.len() > MAX_NODES {
        return Err(Error::Unencodable("a grant holds at most 8192 keys (grant fewer epochs)"));
    }
    let mut out = Vec::with_capacity(200 + keys.len() * NODE_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&owner.ed25519_public());
    out.extend_from_slice(&peer.device_id().0);
    out.push(stream.as_str().len() as u8);
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(&terms.issued_ms.to_be_bytes());
    out.extend_from_slice(&terms.from_ms.to_be_bytes());
    out.extend_from_slice(&terms.to_ms.to_be_bytes());
    let aad_len = out.len();
    let mut plain = Zeroizing::new(Vec::with_capacity(keys.len() * NODE_LEN));
    for (epoch, node) in keys {
        plain.extend_from_slice(&epoch.to_be_bytes());
        plain.push(node.depth);
        plain.extend_from_slice(&node.index.to_be_bytes()[2..]);
        plain.extend_from_slice(node.key.expose_secret());
    }
    let secret = owner.agreement_secret();
    let sk = <KemT as Kem>::PrivateKey::from_bytes(secret.as_ref()).map_err(|_| Error::Unencodable("owner key"))?;
    let pk_own = <KemT as Kem>::sk_to_pk(&sk);
    let pk = <KemT as Kem>::PublicKey::from_bytes(&peer.x25519).map_err(|_| Error::Unencodable("peer key"))?;
    let mode = OpModeS::Auth((sk, pk_own));
    let (enc, ct) = hpke::single_shot_seal_with_rng::<ChaCha20Poly1305, HkdfSha256, KemT>(
        &mode,
        &pk,
        INFO,
        &plain,
        &out[..aad_len],
        rng,
    )
    .map_err(|_| Error::Unencodable("the peer's X25519 key is not usable"))?;
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&(ct.len() as u32).to_be_bytes());
    out.extend_from_slice(&ct);
    let sig = owner.sign(&sig_message(&out));
    out.extend_from_slice(&sig);
    Ok(out)
}

struct Parsed<'a> {
    version: u8,
    info: GrantInfo,
    aad: &'a [u8],
    enc: &'a [u8],
    ct: &'a [u8],
    signed: &'a [u8],
    sig: [u8; 64],
}

fn parse(bytes: &[u8]) -> Result<Parsed<'_>, Error> {
    let mut r = Reader(bytes, 0);
    if r.take(2)? != MAGIC {
        return Err(Error::Invalid("not a grant"));
    }
    let version = r.take(1)?[0];
    if version != VERSION && version != VERSION_1 {
        return Err(Error::UnsupportedVersion(version));
    }
    let owner_ed25519: [u8; 32] = r.array()?;
    let peer = DeviceId(r.array()?);
    let n = r.take(1)?[0] as usize;
    let stream = std::str::from_utf8(r.take(n)?).map_err(|_| Error::Invalid("grant stream name is not UTF-8"))?;
    let stream = StreamName::new(stream)?;
    let issued_ms = i64::from_be_bytes(r.array()?);
    let from_ms = i64::from_be_bytes(r.array()?);
    let to_ms = if version == VERSION { i64::from_be_bytes(r.array()?) } else { i64::MAX };
    let aad = &bytes[..r.1];
    let enc = r.take(32)?;
    let ct_len = if version == VERSION {
        u32::from_be_bytes(r.array()?) as usize
    } else {
        u16::from_be_bytes(r.array()?) as usize
    };
    let ct = r.take(ct_len)?;
    let signed = &bytes[..r.1];
    let sig: [u8; 64] = r.array()?;
    if r.1 != bytes.len() {
        return Err(Error::Invalid("trailing bytes after the grant"));
    }
    let info =
        GrantInfo { owner: device_id_of(&owner_ed25519), owner_ed25519, peer, stream, issued_ms, from_ms, to_ms };
    Ok(Parsed { version, info, aad, enc, ct, signed, sig })
}

/// Reads the clear part without checking anything: for routing only.
pub fn peek(bytes: &[u8]) -> Result<GrantInfo, Error> {
    Ok(parse(bytes)?.info)
}

/// Checks that a grant is signed by the owner it names (its key is in it, and
/// the owner's device id is that key's hash), without opening it: what an
/// untrusted store or ingest can check. The clear part, when it is.
pub fn authentic(bytes: &[u8]) -> Result<GrantInfo, Error> {
    let p = parse(bytes)?;
    if !verify_signature(&p.info.owner_ed25519, &sig_message(p.signed), &p.sig) {
        return Err(Error::Invalid("the grant is not signed by the owner it names"));
    }
    Ok(p.info)
}

/// Verifies and opens a grant addressed to `me` from `owner`.
pub fn open(bytes: &[u8], me: &Identity, owner: &PublicIdentity) -> Result<Grant, Error> {
    let p = parse(bytes)?;
    if p.info.owner_ed25519 != owner.ed25519 || !verify_signature(&owner.ed25519, &sig_message(p.signed), &p.sig) {
        return Err(Error::Invalid("the grant is not signed by the peer it claims to come from"));
    }
    if p.info.peer != me.device_id() {
        return Err(Error::Invalid("the grant is addressed to another device"));
    }
    let secret = me.agreement_secret();
    let sk = <KemT as Kem>::PrivateKey::from_bytes(secret.as_ref()).map_err(|_| Error::CouldNotOpen)?;
    let owner_pk = <KemT as Kem>::PublicKey::from_bytes(&owner.x25519).map_err(|_| Error::CouldNotOpen)?;
    let enc = <KemT as Kem>::EncappedKey::from_bytes(p.enc).map_err(|_| Error::CouldNotOpen)?;
    let plain = Zeroizing::new(
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, KemT>(
            &OpModeR::Auth(owner_pk),
            &sk,
            &enc,
            INFO,
            p.ct,
            p.aad,
        )
        .map_err(|_| Error::CouldNotOpen)?,
    );
    let len = if p.version == VERSION { NODE_LEN } else { 36 };
    if plain.len() % len != 0 || plain.len() / len > MAX_NODES {
        return Err(Error::Invalid("grant key list has the wrong size"));
    }
    let mut keys = Vec::with_capacity(plain.len() / len);
    for c in plain.chunks_exact(len) {
        let epoch = u32::from_be_bytes(c[..4].try_into().expect("4 bytes"));
        let key: [u8; 32] = c[len - 32..].try_into().expect("32 bytes");
        let key = SecretBytes::new(key);
        let node = if p.version == VERSION_1 {
            TreeNode::root(&EpochKey(key))
        } else {
            let mut index = [0u8; 8];
            index[2..].copy_from_slice(&c[5..11]);
            let (depth, index) = (c[4], u64::from_be_bytes(index));
            if depth > TREE_DEPTH || index >> depth != 0 {
                return Err(Error::Invalid("grant names a key tree node that does not exist"));
            }
            TreeNode { depth, index, key }
        };
        keys.push((epoch, node));
    }
    Ok(Grant { info: p.info, keys })
}

fn sig_message(signed: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIG_DOMAIN.len() + signed.len());
    m.extend_from_slice(SIG_DOMAIN);
    m.extend_from_slice(signed);
    m
}

struct Reader<'a>(&'a [u8], usize);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.1.checked_add(n).filter(|e| *e <= self.0.len()).ok_or(Error::Truncated)?;
        let s = &self.0[self.1..end];
        self.1 = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spake2::{SysRng, UnwrapErr};

    fn id(seed: u8) -> Identity {
        Identity::from_secret_bytes(&[seed; 96])
    }

    fn grant(owner: &Identity, peer: &Identity, epochs: &[u32]) -> Vec<u8> {
        let s = StreamName::new("temperature").unwrap();
        let keys: Vec<_> = epochs.iter().map(|e| (*e, TreeNode::root(&owner.epoch_key(&s, *e)))).collect();
        let terms = Terms { issued_ms: 1_000, from_ms: 500, to_ms: i64::MAX };
        issue(owner, &peer.public(), &s, terms, &keys, &mut UnwrapErr(SysRng)).unwrap()
    }

    #[test]
    fn a_range_grant_holds_the_range_and_nothing_else() {
        let (owner, peer) = (id(1), id(2));
        let s = StreamName::new("temperature").unwrap();
        let (from, to) = (1_767_225_600_000, 1_767_229_200_000);
        let k = owner.epoch_key(&s, 4);
        let keys: Vec<_> = range_nodes(&k, from, to).into_iter().map(|n| (4, n)).collect();
        assert!(keys.len() <= 96);
        let terms = Terms { issued_ms: 1, from_ms: from, to_ms: to };
        let g = open(
            &issue(&owner, &peer.public(), &s, terms, &keys, &mut UnwrapErr(SysRng)).unwrap(),
            &peer,
            &owner.public(),
        )
        .unwrap();
        assert_eq!((g.info.from_ms, g.info.to_ms), (from, to));
        let mut held = crate::keys::EpochKeys::default();
        for (_, n) in g.keys {
            held.add(n);
        }
        let root = TreeNode::root(&k);
        for t in [from, from + 1, to - 1, to] {
            assert_eq!(held.leaf(t as u64), root.leaf(t as u64), "{t}");
        }
        for t in [0, from - 1, to + 1, i64::MAX] {
            assert!(held.leaf(crate::keys::slot_of(t)).is_none(), "{t}");
        }
        assert!(held.whole().is_none());
    }

    #[test]
    fn the_peer_opens_exactly_the_granted_keys() {
        let (owner, peer) = (id(1), id(2));
        let g = open(&grant(&owner, &peer, &[0, 3]), &peer, &owner.public()).unwrap();
        let s = StreamName::new("temperature").unwrap();
        assert_eq!(g.keys.len(), 2);
        assert_eq!(g.keys[1].0, 3);
        assert_eq!(g.keys[1].1, TreeNode::root(&owner.epoch_key(&s, 3)));
        assert_eq!(g.info.stream, s);
        assert_eq!((g.info.issued_ms, g.info.from_ms), (1_000, 500));
        assert_eq!(g.info.owner, owner.device_id());
        assert!(!g.is_revocation());
        assert!(open(&grant(&owner, &peer, &[]), &peer, &owner.public()).unwrap().is_revocation());
    }

    #[test]
    fn anyone_can_check_who_signed_a_grant_and_nobody_else_can_open_it() {
        let (owner, peer) = (id(1), id(2));
        let bytes = grant(&owner, &peer, &[0]);
        let info = authentic(&bytes).unwrap();
        assert_eq!((info.owner, info.peer), (owner.device_id(), peer.device_id()));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(authentic(&b).is_err(), "flip at {i}");
        }
        assert!(open(&bytes, &id(3), &owner.public()).is_err());
    }

    /// A grant as format v1 builds issued it: whole epoch keys, no end, a u16 length.
    #[test]
    fn a_version_1_grant_is_still_read_as_whole_epochs() {
        let (owner, peer) = (id(1), id(2));
        let s = StreamName::new("temperature").unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(VERSION_1);
        out.extend_from_slice(&owner.ed25519_public());
        out.extend_from_slice(&peer.device_id().0);
        out.push(s.as_str().len() as u8);
        out.extend_from_slice(s.as_str().as_bytes());
        out.extend_from_slice(&7i64.to_be_bytes());
        out.extend_from_slice(&5i64.to_be_bytes());
        let aad_len = out.len();
        let mut plain = 2u32.to_be_bytes().to_vec();
        plain.extend_from_slice(owner.epoch_key(&s, 2).0.expose_secret());
        let secret = owner.agreement_secret();
        let sk = <KemT as Kem>::PrivateKey::from_bytes(secret.as_ref()).unwrap();
        let mode = OpModeS::Auth((sk.clone(), <KemT as Kem>::sk_to_pk(&sk)));
        let pk = <KemT as Kem>::PublicKey::from_bytes(&peer.public().x25519).unwrap();
        let (enc, ct) = hpke::single_shot_seal_with_rng::<ChaCha20Poly1305, HkdfSha256, KemT>(
            &mode,
            &pk,
            INFO,
            &plain,
            &out[..aad_len],
            &mut UnwrapErr(SysRng),
        )
        .unwrap();
        out.extend_from_slice(&enc.to_bytes());
        out.extend_from_slice(&(ct.len() as u16).to_be_bytes());
        out.extend_from_slice(&ct);
        let sig = owner.sign(&sig_message(&out));
        out.extend_from_slice(&sig);
        let g = open(&out, &peer, &owner.public()).unwrap();
        assert_eq!((g.info.issued_ms, g.info.from_ms, g.info.to_ms), (7, 5, i64::MAX));
        assert_eq!(g.keys.len(), 1);
        assert_eq!(g.keys[0], (2, TreeNode::root(&owner.epoch_key(&s, 2))));
    }

    #[test]
    fn another_device_cannot_open_it() {
        let (owner, peer, other) = (id(1), id(2), id(3));
        let g = grant(&owner, &peer, &[0]);
        assert!(open(&g, &other, &owner.public()).is_err());
        // Nor does it open when someone else claims to be the owner.
        assert!(open(&g, &peer, &other.public()).is_err());
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let (owner, peer) = (id(1), id(2));
        let g = grant(&owner, &peer, &[0, 1]);
        for i in 0..g.len() {
            let mut bad = g.clone();
            bad[i] ^= 1;
            assert!(open(&bad, &peer, &owner.public()).is_err(), "byte {i}");
        }
        for cut in 0..g.len() {
            assert!(open(&g[..cut], &peer, &owner.public()).is_err());
        }
    }

    #[test]
    fn a_grant_claiming_another_owner_is_refused() {
        let (owner, peer, mallory) = (id(1), id(2), id(3));
        let mut forged = grant(&mallory, &peer, &[0]);
        forged[3..35].copy_from_slice(&owner.ed25519_public());
        assert!(open(&forged, &peer, &owner.public()).is_err());
    }
}
