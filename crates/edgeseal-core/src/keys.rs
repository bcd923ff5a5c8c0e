//! Identities and stream keys.
//!
//! An agent's [`Identity`] holds three secrets: an Ed25519 signing key, an
//! X25519 agreement key (for key wrapping to peers) and a *stream root* from
//! which each stream's epoch keys are derived with HKDF-SHA256 (RFC 5869).
//! A peer given the key of epoch `e` cannot derive any other epoch's key, so
//! rotation (a new epoch) needs no re-encryption of old data. Within an
//! epoch, format v2 seals each batch under a leaf of a key tree over time
//! ([`TreeNode`]), so a grant of a time range is a few nodes of that tree.

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

/// Verifies many Ed25519 signatures at once: `(public key, message, signature)`
/// each; whether each verifies. All together first (a batch equation, about
/// twice as fast per signature), one by one only when that fails, to tell
/// which. For a filter such as ingest: a reader checks each one on its own.
pub fn verify_signatures(items: &[(&[u8; 32], &[u8], &[u8; 64])]) -> Vec<bool> {
    let one = |(pk, msg, sig): &(&[u8; 32], &[u8], &[u8; 64])| verify_signature(pk, msg, sig);
    if items.len() < 4 {
        return items.iter().map(one).collect();
    }
    let keys: Option<Vec<VerifyingKey>> = items.iter().map(|(pk, ..)| VerifyingKey::from_bytes(pk).ok()).collect();
    if let Some(keys) = keys {
        let msgs: Vec<&[u8]> = items.iter().map(|(_, m, _)| *m).collect();
        let sigs: Vec<ed25519_dalek::Signature> =
            items.iter().map(|(_, _, s)| ed25519_dalek::Signature::from_bytes(s)).collect();
        if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
            return vec![true; items.len()];
        }
    }
    items.iter().map(one).collect()
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

/// Depth of an epoch's key tree: a leaf per millisecond of Unix time, from
/// 1970 to the year 10889 (times outside share the first or last leaf).
pub const TREE_DEPTH: u8 = 48;
/// The highest leaf (slot) of an epoch's key tree.
pub const LAST_SLOT: u64 = (1 << TREE_DEPTH) - 1;
const TREE_LABEL: &[u8] = b"edgeseal/v2/key-tree";

/// The leaf of the key tree a time (Unix ms) falls in.
pub fn slot_of(ts_ms: i64) -> u64 {
    ts_ms.clamp(0, LAST_SLOT as i64) as u64
}

/// The key of one node of an epoch's key tree (format v2, `docs/format.md`).
/// The epoch key is the root (depth 0); the children of a node are
/// SHA-256("edgeseal/v2/key-tree" ‖ node key ‖ 0 or 1), so a node's key
/// gives every key under it and nothing else (a GGM tree). The node at
/// `depth`, `index` holds the slots `index << (48 - depth)` up to
/// `((index + 1) << (48 - depth)) - 1`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TreeNode {
    pub depth: u8,
    pub index: u64,
    pub key: SecretBytes,
}

impl TreeNode {
    /// The whole epoch.
    pub fn root(epoch_key: &EpochKey) -> TreeNode {
        TreeNode { depth: 0, index: 0, key: epoch_key.0.clone() }
    }

    /// The first and last slot this node holds.
    pub fn slots(&self) -> (u64, u64) {
        let shift = u32::from(TREE_DEPTH - self.depth);
        (self.index << shift, ((self.index + 1) << shift) - 1)
    }

    pub fn holds(&self, slot: u64) -> bool {
        let (lo, hi) = self.slots();
        (lo..=hi).contains(&slot)
    }

    /// The node at `depth`, `index` if it is this one or under it.
    pub fn descend(&self, depth: u8, index: u64) -> Option<TreeNode> {
        if depth < self.depth || depth > TREE_DEPTH || index >> (depth - self.depth) != self.index {
            return None;
        }
        let mut key = *self.key.expose_secret();
        for level in self.depth..depth {
            let bit = ((index >> (depth - level - 1)) & 1) as u8;
            key = child_key(&key, bit);
        }
        let node = TreeNode { depth, index, key: SecretBytes(key) };
        key.zeroize();
        Some(node)
    }

    /// The key of leaf `slot`, if this node holds it.
    pub fn leaf(&self, slot: u64) -> Option<EpochKey> {
        self.descend(TREE_DEPTH, slot).map(|n| EpochKey(n.key))
    }
}

fn child_key(parent: &[u8; 32], bit: u8) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(TREE_LABEL);
    h.update(parent);
    h.update([bit]);
    h.finalize().into()
}

/// The fewest nodes (depth, index) that hold exactly the slots `from..=to`:
/// at most two per level, so at most 96.
pub fn cover(from: u64, to: u64) -> Vec<(u8, u64)> {
    let to = to.min(LAST_SLOT);
    let mut out = Vec::new();
    let mut lo = from;
    while lo <= to {
        let mut size = if lo == 0 { u32::from(TREE_DEPTH) } else { lo.trailing_zeros().min(u32::from(TREE_DEPTH)) };
        while size > 0 && lo + ((1u64 << size) - 1) > to {
            size -= 1;
        }
        out.push((TREE_DEPTH - size as u8, lo >> size));
        lo += 1u64 << size;
    }
    out
}

/// The leaf keys of one epoch, for a sealer: consecutive batches share most
/// of their path from the root, so only the part that differs is derived again.
pub struct LeafCache {
    /// path[d] is the key of the node at depth d on the way to `slot`.
    path: Zeroizing<Vec<[u8; 32]>>,
    slot: Option<u64>,
}

impl fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafCache").field("slot", &self.slot).finish_non_exhaustive()
    }
}

impl LeafCache {
    pub fn new(epoch_key: &EpochKey) -> LeafCache {
        let mut path = Zeroizing::new(vec![[0u8; 32]; usize::from(TREE_DEPTH) + 1]);
        path[0] = *epoch_key.0.expose_secret();
        LeafCache { path, slot: None }
    }

    /// The key of leaf `slot`.
    pub fn leaf(&mut self, slot: u64) -> EpochKey {
        let slot = slot.min(LAST_SLOT);
        // The depth down to which the cached path is still right.
        let same = match self.slot {
            None => 0,
            Some(old) => ((old ^ slot) << (64 - u32::from(TREE_DEPTH))).leading_zeros().min(u32::from(TREE_DEPTH)),
        } as usize;
        for d in same..usize::from(TREE_DEPTH) {
            let bit = ((slot >> (usize::from(TREE_DEPTH) - d - 1)) & 1) as u8;
            self.path[d + 1] = child_key(&self.path[d], bit);
        }
        self.slot = Some(slot);
        EpochKey(SecretBytes(self.path[usize::from(TREE_DEPTH)]))
    }
}

/// What a reader holds of one epoch of one stream: the whole epoch (its
/// owner, or a format v1 grant) or the nodes of the key tree a grant gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochKeys {
    nodes: Vec<TreeNode>,
}

impl From<EpochKey> for EpochKeys {
    fn from(k: EpochKey) -> EpochKeys {
        EpochKeys { nodes: vec![TreeNode::root(&k)] }
    }
}

impl EpochKeys {
    pub fn nodes(&self) -> &[TreeNode] {
        &self.nodes
    }

    /// Adds a node (nothing when a node held already holds it).
    pub fn add(&mut self, node: TreeNode) {
        let (lo, hi) = node.slots();
        if self.nodes.iter().any(|n| n.holds(lo) && n.holds(hi)) {
            return;
        }
        self.nodes.retain(|n| {
            let (a, b) = n.slots();
            !(lo <= a && b <= hi)
        });
        self.nodes.push(node);
    }

    /// The epoch key itself, if the whole epoch is held (format v1 items need it).
    pub fn whole(&self) -> Option<EpochKey> {
        self.nodes.iter().find(|n| n.depth == 0).map(|n| EpochKey(n.key.clone()))
    }

    /// The key of leaf `slot`, if held.
    pub fn leaf(&self, slot: u64) -> Option<EpochKey> {
        self.nodes.iter().find(|n| n.holds(slot))?.leaf(slot)
    }

    /// The key a batch or frame whose first reading is at `first_ts` is
    /// sealed under: in format v1 (`whole_epoch`) the epoch key itself, in
    /// v2 the leaf of that time.
    pub fn for_item(&self, whole_epoch: bool, first_ts: i64) -> Option<EpochKey> {
        if whole_epoch { self.whole() } else { self.leaf(slot_of(first_ts)) }
    }

    /// The slots held, as (first, last) ranges in order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut r: Vec<(u64, u64)> = self.nodes.iter().map(TreeNode::slots).collect();
        r.sort_unstable();
        r
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
    #[test]
    fn cover_is_exact_and_small() {
        for (from, to) in
            [(0, LAST_SLOT), (1, LAST_SLOT), (5, 5), (3, 17), (1_767_225_600_000, LAST_SLOT), (7, 1 << 40)]
        {
            let nodes = cover(from, to);
            assert!(nodes.len() <= 96, "{from}..={to}: {} nodes", nodes.len());
            let mut next = from;
            for (d, i) in &nodes {
                let n = TreeNode { depth: *d, index: *i, key: SecretBytes([0; 32]) };
                let (lo, hi) = n.slots();
                assert_eq!(lo, next, "{from}..={to}: nodes must tile the range in order");
                next = hi + 1;
            }
            assert_eq!(next, to + 1);
        }
        assert_eq!(cover(0, LAST_SLOT), vec![(0, 0)]);
        assert!(cover(9, 3).is_empty());
    }

    #[test]
    fn a_node_opens_its_leaves_and_nothing_else() {
        let root = TreeNode::root(&identity(1).epoch_key(&StreamName::new("t").unwrap(), 0));
        let t = 1_767_225_600_000u64;
        let mut keys = EpochKeys::default();
        for (d, i) in cover(t, LAST_SLOT) {
            keys.add(root.descend(d, i).unwrap());
        }
        assert!(keys.whole().is_none());
        assert_eq!(keys.leaf(t), root.leaf(t));
        assert_eq!(keys.leaf(t + 12_345), root.leaf(t + 12_345));
        assert_eq!(keys.leaf(LAST_SLOT), root.leaf(LAST_SLOT));
        assert!(keys.leaf(t - 1).is_none());
        assert!(keys.leaf(0).is_none());
        // A node cannot give what is beside or above it.
        let n = root.descend(10, 5).unwrap();
        assert!(n.descend(10, 4).is_none() && n.descend(9, 2).is_none());
        assert!(n.descend(11, 10).is_some() && n.descend(11, 12).is_none());
    }

    #[test]
    fn the_leaf_cache_agrees_with_the_tree() {
        let k = identity(1).epoch_key(&StreamName::new("t").unwrap(), 0);
        let root = TreeNode::root(&k);
        let mut cache = LeafCache::new(&k);
        for slot in [5u64, 6, 7, 1 << 20, (1 << 20) + 1, 3, LAST_SLOT, 0, 0, LAST_SLOT + 9] {
            assert_eq!(Some(cache.leaf(slot)), root.leaf(slot.min(LAST_SLOT)), "slot {slot}");
        }
    }
}
