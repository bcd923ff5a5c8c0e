//! Pairing two agents through an untrusted broker with a one-time code.
//!
//! The magic-wormhole approach: the host shows a code such as `7-amber-tiger`
//! (a channel number and two words from a 256-word list); the joiner types it.
//! Both run SPAKE2 (a password-authenticated key exchange) with the code as
//! the password, so a broker or network that relays the messages learns
//! nothing about the shared key and gets exactly one guess at the code: any
//! altered, swapped, replayed or dropped message makes pairing fail, never
//! succeed with the wrong party. Over the shared key each side sends its
//! identity (Ed25519 and X25519 public keys, a display name), signed over the
//! transcript.
//!
//! Without a keyboard the joiner can use the comparison fallback ([`PairCode::sas`]):
//! the code is only the channel number, and both sides show a six-digit
//! comparison code ([`Paired::comparison_code`]) that a person confirms on
//! both; a man in the middle ends up with different codes on the two sides.
//!
//! Messages (each starts with `b"EP"`, version 1 and a type byte):
//! 1. joiner → host: SPAKE2 message B
//! 2. host → joiner: SPAKE2 message A, then the host's identity sealed with the host key
//! 3. joiner → host: the joiner's identity sealed with the joiner key
//! 4. host → joiner: `ok` sealed with the host key (second nonce): the host accepted

use std::fmt;
use std::str::FromStr;

use hkdf::Hkdf;
use ring::aead;
use sha2::{Digest, Sha256};
use spake2::rand_core::CryptoRng;
use spake2::{Ed25519Group, Identity as SpakeId, Password, Spake2};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::keys::{Identity, PublicIdentity, verify_signature};

const MAGIC: &[u8; 2] = b"EP";
const VERSION: u8 = 1;
const NAME_MAX: usize = 64;

/// The word list: 256 short, distinct English words.
pub const WORDS: [&str; 256] = [
    "able", "acid", "also", "amber", "area", "army", "away", "back", "ball", "band", "base", "bath", "bear", "beat",
    "belt", "bird", "blue", "body", "bone", "book", "boot", "boss", "both", "bowl", "burn", "bush", "busy", "cake",
    "came", "camp", "card", "cart", "case", "cash", "cast", "chip", "city", "clay", "coal", "coat", "code", "cold",
    "cool", "copy", "corn", "crew", "crop", "dark", "dawn", "dear", "deep", "deer", "dial", "dice", "diet", "dish",
    "door", "dove", "down", "drop", "drum", "duck", "dust", "each", "earn", "east", "easy", "else", "envy", "epic",
    "ever", "exit", "face", "fact", "fall", "farm", "fast", "fern", "film", "fine", "fire", "fish", "flag", "flat",
    "foam", "fold", "folk", "food", "fork", "form", "fort", "free", "frog", "fuel", "full", "gain", "game", "gate",
    "gift", "girl", "glad", "glow", "gold", "golf", "good", "grid", "grow", "gulf", "hail", "half", "hall", "hand",
    "harp", "hawk", "head", "heat", "hero", "high", "hill", "hole", "home", "hook", "hope", "host", "hour", "huge",
    "iron", "item", "jade", "jazz", "jump", "jury", "keen", "kind", "king", "kite", "knot", "lamb", "lamp", "land",
    "last", "lava", "lawn", "leaf", "life", "lily", "lime", "lion", "list", "loaf", "lock", "long", "loop", "lord",
    "lung", "made", "mail", "main", "many", "map", "mask", "meal", "mild", "milk", "mill", "mist", "mode", "moon",
    "moth", "much", "mule", "nail", "neat", "nest", "news", "nice", "node", "noon", "nose", "oak", "oath", "oven",
    "pace", "pack", "page", "palm", "path", "peak", "pear", "pink", "plan", "plum", "poem", "pond", "pony", "pool",
    "port", "pump", "race", "raft", "rain", "ramp", "rare", "reed", "rice", "rich", "ring", "rock", "roof", "room",
    "root", "rose", "ruby", "rule", "safe", "sage", "sail", "salt", "seal", "seed", "ship", "silk", "sing", "site",
    "skip", "slow", "snow", "soap", "soft", "soil", "song", "soup", "stem", "stop", "swan", "tame", "tank", "tent",
    "tide", "tiger", "time", "tone", "tree", "tuna", "twin", "vase", "vest", "vine", "wave", "wolf", "wool", "yard",
    "yarn", "year", "zinc", "zone",
];

/// A one-time pairing code: a channel number (1–999), and two words unless it
/// is a comparison-code (SAS) pairing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PairCode {
    pub channel: u16,
    words: Option<[u8; 2]>,
}

impl PairCode {
    /// A fresh code with two random words.
    pub fn random(rng: &mut impl CryptoRng) -> PairCode {
        let mut b = [0u8; 4];
        rng.fill_bytes(&mut b);
        let channel = 1 + u16::from_le_bytes([b[0], b[1]]) % 999;
        PairCode { channel, words: Some([b[2], b[3]]) }
    }

    /// A comparison-code pairing on `channel`: no secret words; the people
    /// compare the six-digit code both sides show instead.
    pub fn sas(channel: u16) -> PairCode {
        PairCode { channel, words: None }
    }

    /// Whether this pairing needs the people to compare codes.
    pub fn is_sas(&self) -> bool {
        self.words.is_none()
    }

    fn password(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(format!("edgeseal/v1/pair/{self}").into_bytes())
    }
}

impl fmt::Display for PairCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.words {
            Some([a, b]) => write!(f, "{}-{}-{}", self.channel, WORDS[a as usize], WORDS[b as usize]),
            None => write!(f, "{}", self.channel),
        }
    }
}

impl fmt::Debug for PairCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairCode({}-…)", self.channel)
    }
}

impl FromStr for PairCode {
    type Err = Error;
    fn from_str(s: &str) -> Result<PairCode, Error> {
        const SHAPE: &str = "a pairing code looks like 7-amber-tiger (a number from 1 to 999 and two words)";
        let s = s.trim().to_ascii_lowercase();
        let mut parts = s.split(['-', ' ']).filter(|p| !p.is_empty());
        let channel: u16 = parts.next().and_then(|c| c.parse().ok()).ok_or(Error::Invalid(SHAPE))?;
        if !(1..=999).contains(&channel) {
            return Err(Error::Invalid(SHAPE));
        }
        let word =
            |w: Option<&str>| -> Result<Option<u8>, Error> {
                match w {
                    None => Ok(None),
                    Some(w) => WORDS.iter().position(|x| *x == w).map(|i| Some(i as u8)).ok_or(Error::Invalid(
                        "a word of the pairing code is not in the word list: check its spelling",
                    )),
                }
            };
        let (a, b) = (word(parts.next())?, word(parts.next())?);
        if parts.next().is_some() {
            return Err(Error::Invalid(SHAPE));
        }
        match (a, b) {
            (Some(a), Some(b)) => Ok(PairCode { channel, words: Some([a, b]) }),
            (None, None) => Ok(PairCode::sas(channel)),
            _ => Err(Error::Invalid(SHAPE)),
        }
    }
}

/// A peer's identity as learned by pairing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub public: PublicIdentity,
    pub name: String,
}

/// A finished pairing.
#[derive(Debug)]
pub struct Paired {
    pub peer: Peer,
    sas: u32,
}

impl Paired {
    /// Six digits derived from the session key: equal on both sides exactly
    /// when no one sat in the middle.
    pub fn comparison_code(&self) -> String {
        format!("{:03} {:03}", self.sas / 1000, self.sas % 1000)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Host,
    Joiner,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Host => b"host",
            Role::Joiner => b"joiner",
        }
    }
}

struct Session {
    host_key: aead::LessSafeKey,
    joiner_key: aead::LessSafeKey,
    transcript: [u8; 32],
    sas: u32,
}

impl Session {
    fn new(shared: &[u8], code: &PairCode, msg_a: &[u8], msg_b: &[u8]) -> Session {
        let mut t = Sha256::new();
        t.update(b"edgeseal/v1/pair-transcript");
        t.update([u8::from(code.is_sas())]);
        t.update(msg_a);
        t.update(msg_b);
        let transcript: [u8; 32] = t.finalize().into();
        let hk = Hkdf::<Sha256>::new(Some(&transcript), shared);
        let key = |label: &[u8]| {
            let mut okm = Zeroizing::new([0u8; 32]);
            hk.expand(label, okm.as_mut()).expect("32 bytes is a valid HKDF length");
            let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, okm.as_ref()).expect("32-byte key");
            aead::LessSafeKey::new(unbound)
        };
        let mut sas = [0u8; 4];
        hk.expand(b"edgeseal/v1/pair/sas", &mut sas).expect("4 bytes is a valid HKDF length");
        Session {
            host_key: key(b"edgeseal/v1/pair/host"),
            joiner_key: key(b"edgeseal/v1/pair/joiner"),
            transcript,
            sas: u32::from_be_bytes(sas) % 1_000_000,
        }
    }

    fn key(&self, from: Role) -> &aead::LessSafeKey {
        match from {
            Role::Host => &self.host_key,
            Role::Joiner => &self.joiner_key,
        }
    }

    fn seal(&self, from: Role, counter: u8, kind: u8, plain: &[u8], out: &mut Vec<u8>) {
        let mut buf = plain.to_vec();
        let tag = self
            .key(from)
            .seal_in_place_separate_tag(nonce(counter), aead::Aad::from([kind]), &mut buf)
            .expect("a pairing message is far below the AEAD size limit");
        out.extend_from_slice(&buf);
        out.extend_from_slice(tag.as_ref());
    }

    fn open(&self, from: Role, counter: u8, kind: u8, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let mut buf = sealed.to_vec();
        let plain = self
            .key(from)
            .open_in_place(nonce(counter), aead::Aad::from([kind]), &mut buf)
            .map_err(|_| Error::PairingFailed(WRONG_CODE))?;
        Ok(plain.to_vec())
    }

    fn identity_box(&self, me: &Identity, name: &str, role: Role, kind: u8, out: &mut Vec<u8>) {
        let public = me.public();
        let name = truncate(name, NAME_MAX);
        let sig = me.sign(&self.signed_identity(role, &public, name));
        let mut plain = Vec::with_capacity(128 + name.len());
        plain.extend_from_slice(&public.ed25519);
        plain.extend_from_slice(&public.x25519);
        plain.extend_from_slice(&sig);
        plain.extend_from_slice(name.as_bytes());
        self.seal(role, 0, kind, &plain, out);
    }

    fn open_identity(&self, from: Role, kind: u8, sealed: &[u8]) -> Result<Peer, Error> {
        let plain = self.open(from, 0, kind, sealed)?;
        if plain.len() < 128 || plain.len() > 128 + NAME_MAX {
            return Err(Error::PairingFailed("the peer's identity message has the wrong size"));
        }
        let arr = |r: std::ops::Range<usize>| -> [u8; 32] { plain[r].try_into().expect("32-byte slice") };
        let public = PublicIdentity { ed25519: arr(0..32), x25519: arr(32..64) };
        let sig: [u8; 64] = plain[64..128].try_into().expect("64-byte slice");
        let name = std::str::from_utf8(&plain[128..])
            .map_err(|_| Error::PairingFailed("the peer's name is not UTF-8"))?
            .to_string();
        if !verify_signature(&public.ed25519, &self.signed_identity(from, &public, &name), &sig) {
            return Err(Error::PairingFailed("the peer's identity signature does not verify"));
        }
        Ok(Peer { public, name })
    }

    fn signed_identity(&self, role: Role, public: &PublicIdentity, name: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(128 + name.len());
        m.extend_from_slice(b"edgeseal/v1/pair-identity");
        m.extend_from_slice(role.label());
        m.extend_from_slice(&self.transcript);
        m.extend_from_slice(&public.ed25519);
        m.extend_from_slice(&public.x25519);
        m.extend_from_slice(name.as_bytes());
        m
    }
}

const WRONG_CODE: &str = "the other side used a different code, or someone altered the messages";
const T_JOIN: u8 = 1;
const T_HOST: u8 = 2;
const T_JOINER_ID: u8 = 3;
const T_ACCEPT: u8 = 4;

const T_ABORT: u8 = 0xff;

/// "I give up": sent by a side whose pairing failed so the other stops
/// waiting. Unauthenticated on purpose: it only ends a pairing early, which a
/// broker could do anyway by dropping messages.
pub fn abort_message() -> Vec<u8> {
    frame(T_ABORT)
}

pub fn is_abort(msg: &[u8]) -> bool {
    msg == abort_message().as_slice()
}

fn nonce(counter: u8) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[11] = counter;
    aead::Nonce::assume_unique_for_key(n)
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn frame(kind: u8) -> Vec<u8> {
    let mut m = Vec::with_capacity(256);
    m.extend_from_slice(MAGIC);
    m.push(VERSION);
    m.push(kind);
    m
}

fn unframe(msg: &[u8], kind: u8) -> Result<&[u8], Error> {
    if msg.len() < 4 || &msg[..2] != MAGIC {
        return Err(Error::PairingFailed("a message on the pairing channel is not a pairing message"));
    }
    if msg[2] != VERSION {
        return Err(Error::UnsupportedVersion(msg[2]));
    }
    if msg[3] != kind {
        return Err(Error::PairingFailed("a pairing message arrived out of order"));
    }
    Ok(&msg[4..])
}

fn spake_ids() -> (SpakeId, SpakeId) {
    (SpakeId::new(b"edgeseal/v1/pair/host"), SpakeId::new(b"edgeseal/v1/pair/joiner"))
}

const SPAKE_LEN: usize = 33;

/// The side that showed the code, waiting for the joiner's first message.
pub struct Host {
    code: PairCode,
    spake: Spake2<Ed25519Group>,
    msg_a: Vec<u8>,
}

/// The host after answering: waiting for the joiner's identity.
pub struct HostAnswered {
    session: Session,
}

impl Host {
    pub fn new(code: PairCode, rng: &mut impl CryptoRng) -> Host {
        let (a, b) = spake_ids();
        let (spake, msg_a) = Spake2::<Ed25519Group>::start_a_with_rng(&Password::new(&*code.password()), &a, &b, rng);
        Host { code, spake, msg_a }
    }

    /// Takes the joiner's message 1 and returns message 2.
    pub fn answer(self, msg1: &[u8], me: &Identity, name: &str) -> Result<(HostAnswered, Vec<u8>), Error> {
        let msg_b = unframe(msg1, T_JOIN)?;
        let shared = Zeroizing::new(
            self.spake
                .finish(msg_b)
                .map_err(|_| Error::PairingFailed("the joiner's key-exchange message is malformed"))?,
        );
        let session = Session::new(&shared, &self.code, &self.msg_a, msg_b);
        let mut out = frame(T_HOST);
        out.extend_from_slice(&self.msg_a);
        session.identity_box(me, name, Role::Host, T_HOST, &mut out);
        Ok((HostAnswered { session }, out))
    }
}

impl HostAnswered {
    /// Takes message 3 (the joiner's identity) and returns the peer and message 4.
    pub fn finish(self, msg3: &[u8]) -> Result<(Paired, Vec<u8>), Error> {
        let peer = self.session.open_identity(Role::Joiner, T_JOINER_ID, unframe(msg3, T_JOINER_ID)?)?;
        let mut out = frame(T_ACCEPT);
        self.session.seal(Role::Host, 1, T_ACCEPT, b"ok", &mut out);
        Ok((Paired { peer, sas: self.session.sas }, out))
    }
}

/// The side that typed the code.
pub struct Joiner {
    code: PairCode,
    spake: Spake2<Ed25519Group>,
    msg_b: Vec<u8>,
}

/// The joiner after sending its identity: waiting for the host to accept.
pub struct JoinerSent {
    session: Session,
    paired: Paired,
}

impl Joiner {
    /// Starts joining; returns message 1.
    pub fn new(code: PairCode, rng: &mut impl CryptoRng) -> (Joiner, Vec<u8>) {
        let (a, b) = spake_ids();
        let (spake, msg_b) = Spake2::<Ed25519Group>::start_b_with_rng(&Password::new(&*code.password()), &a, &b, rng);
        let mut out = frame(T_JOIN);
        out.extend_from_slice(&msg_b);
        (Joiner { code, spake, msg_b }, out)
    }

    /// Takes message 2 and returns message 3.
    pub fn confirm(self, msg2: &[u8], me: &Identity, name: &str) -> Result<(JoinerSent, Vec<u8>), Error> {
        let body = unframe(msg2, T_HOST)?;
        if body.len() < SPAKE_LEN {
            return Err(Error::PairingFailed("the host's message is truncated"));
        }
        let (msg_a, sealed) = body.split_at(SPAKE_LEN);
        let shared = Zeroizing::new(
            self.spake
                .finish(msg_a)
                .map_err(|_| Error::PairingFailed("the host's key-exchange message is malformed"))?,
        );
        let session = Session::new(&shared, &self.code, msg_a, &self.msg_b);
        let peer = session.open_identity(Role::Host, T_HOST, sealed)?;
        let mut out = frame(T_JOINER_ID);
        session.identity_box(me, name, Role::Joiner, T_JOINER_ID, &mut out);
        let sas = session.sas;
        Ok((JoinerSent { session, paired: Paired { peer, sas } }, out))
    }

    /// The channel this joiner talks on.
    pub fn channel(&self) -> u16 {
        self.code.channel
    }
}

impl JoinerSent {
    /// The host identity, known (and verified) before the host accepted.
    pub fn peer(&self) -> &Peer {
        &self.paired.peer
    }

    /// The comparison code, before sending message 3 (see [`Paired::comparison_code`]).
    pub fn comparison_code(&self) -> String {
        self.paired.comparison_code()
    }

    /// Takes message 4: pairing is complete on both sides.
    pub fn finish(self, msg4: &[u8]) -> Result<Paired, Error> {
        let plain = self.session.open(Role::Host, 1, T_ACCEPT, unframe(msg4, T_ACCEPT)?)?;
        if plain != b"ok" {
            return Err(Error::PairingFailed("the host did not accept"));
        }
        Ok(self.paired)
    }
}

macro_rules! opaque_debug {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "{..}"))
            }
        }
    )*};
}
opaque_debug!(Host, HostAnswered, Joiner, JoinerSent);

#[cfg(test)]
mod tests {
    use super::*;
    use spake2::{SysRng, UnwrapErr};

    fn id(seed: u8) -> Identity {
        Identity::from_secret_bytes(&[seed; 96])
    }

    fn rng() -> UnwrapErr<SysRng> {
        UnwrapErr(SysRng)
    }

    /// Runs a whole pairing, letting `tamper` rewrite each message (by number) on its way.
    fn run(
        host_code: PairCode,
        join_code: PairCode,
        tamper: impl Fn(u8, Vec<u8>) -> Vec<u8>,
    ) -> Result<(Paired, Paired), Error> {
        let (a, b) = (id(1), id(2));
        let host = Host::new(host_code, &mut rng());
        let (joiner, m1) = Joiner::new(join_code, &mut rng());
        let (host, m2) = host.answer(&tamper(1, m1), &a, "pi")?;
        let (joiner, m3) = joiner.confirm(&tamper(2, m2), &b, "laptop")?;
        let (host_done, m4) = host.finish(&tamper(3, m3))?;
        let joiner_done = joiner.finish(&tamper(4, m4))?;
        Ok((host_done, joiner_done))
    }

    #[test]
    fn both_sides_learn_each_other() {
        let code: PairCode = "7-amber-tiger".parse().unwrap();
        let (h, j) = run(code, code, |_, m| m).unwrap();
        assert_eq!(h.peer.public, id(2).public());
        assert_eq!(h.peer.name, "laptop");
        assert_eq!(j.peer.public, id(1).public());
        assert_eq!(j.peer.name, "pi");
        assert_eq!(h.comparison_code(), j.comparison_code());
    }

    #[test]
    fn a_wrong_code_fails() {
        let code: PairCode = "7-able-zone".parse().unwrap();
        let other: PairCode = "7-able-zinc".parse().unwrap();
        let err = run(code, other, |_, m| m).unwrap_err();
        assert_eq!(err, Error::PairingFailed(WRONG_CODE));
    }

    #[test]
    fn any_altered_byte_of_any_message_fails() {
        let code = PairCode::random(&mut rng());
        for msg in 1..=4u8 {
            for at in 0..6usize {
                let r = run(code, code, |n, mut m| {
                    if n == msg {
                        let pos = [0, 3, 4, m.len() / 2, m.len() - 17, m.len() - 1][at];
                        m[pos] ^= 0x20;
                    }
                    m
                });
                assert!(r.is_err(), "message {msg} position {at} altered but pairing succeeded");
            }
        }
    }

    #[test]
    fn a_man_in_the_middle_without_the_code_fails() {
        // Mallory answers the joiner herself, guessing a code.
        let code: PairCode = "5-zinc-moon".parse().unwrap();
        let guess: PairCode = "5-zinc-moth".parse().unwrap();
        let mallory = id(9);
        let fake_host = Host::new(guess, &mut rng());
        let (joiner, m1) = Joiner::new(code, &mut rng());
        let (_, m2) = fake_host.answer(&m1, &mallory, "pi").unwrap();
        assert!(joiner.confirm(&m2, &id(2), "laptop").is_err());
    }

    #[test]
    fn replayed_messages_from_an_earlier_pairing_fail() {
        let code: PairCode = "5-zinc-moon".parse().unwrap();
        let host = Host::new(code, &mut rng());
        let (joiner, m1) = Joiner::new(code, &mut rng());
        let (_host, m2) = host.answer(&m1, &id(1), "pi").unwrap();
        let (_, old_m3) = joiner.confirm(&m2, &id(2), "laptop").unwrap();
        // A new session with the same code: the old joiner's message 3 does not open.
        let host2 = Host::new(code, &mut rng());
        let (joiner2, m1b) = Joiner::new(code, &mut rng());
        let (host2, _m2b) = host2.answer(&m1b, &id(1), "pi").unwrap();
        assert!(host2.finish(&old_m3).is_err());
        drop(joiner2);
    }

    #[test]
    fn sas_mode_codes_differ_under_a_man_in_the_middle() {
        let code = PairCode::sas(42);
        let (h, j) = run(code, code, |_, m| m).unwrap();
        assert_eq!(h.comparison_code(), j.comparison_code());
        // Mallory runs one session with each side: both "succeed", but the codes differ.
        let mallory = id(9);
        let host = Host::new(code, &mut rng());
        let (mj, m1) = Joiner::new(code, &mut rng());
        let (host, m2) = host.answer(&m1, &id(1), "pi").unwrap();
        let (mj, m3) = mj.confirm(&m2, &mallory, "laptop").unwrap();
        let (host_view, _) = host.finish(&m3).unwrap();
        let mh = Host::new(code, &mut rng());
        let (joiner, m1) = Joiner::new(code, &mut rng());
        let (mh, m2) = mh.answer(&m1, &mallory, "pi").unwrap();
        let (joiner, m3) = joiner.confirm(&m2, &id(2), "laptop").unwrap();
        let (_, m4) = mh.finish(&m3).unwrap();
        let joiner_view = joiner.finish(&m4).unwrap();
        assert_ne!(host_view.comparison_code(), joiner_view.comparison_code());
        drop(mj);
    }

    #[test]
    fn codes_parse_and_print() {
        let c = PairCode::random(&mut rng());
        assert_eq!(c.to_string().parse::<PairCode>().unwrap(), c);
        assert_eq!(" 12-Able-ZONE ".parse::<PairCode>().unwrap().to_string(), "12-able-zone");
        assert!("12".parse::<PairCode>().unwrap().is_sas());
        for bad in ["", "0-able-zone", "1000-able-zone", "x-able-zone", "1-able", "1-able-zone-x", "1-ablex-zone"] {
            assert!(bad.parse::<PairCode>().is_err(), "{bad}");
        }
        assert!(!format!("{c:?}").contains('-') || !format!("{c:?}").contains(WORDS[0]));
    }

    #[test]
    fn garbage_never_panics() {
        let code = PairCode::sas(1);
        for len in 0..120 {
            let junk = vec![0x45u8; len];
            let host = Host::new(code, &mut rng());
            let _ = host.answer(&junk, &id(1), "x");
            let (joiner, _) = Joiner::new(code, &mut rng());
            let _ = joiner.confirm(&junk, &id(2), "y");
        }
    }
}
