//! The keystore file: an identity's public keys in clear and its secret keys,
//! optionally sealed under a passphrase with Argon2id (RFC 9106) and
//! ChaCha20-Poly1305 (RFC 8439). The file is JSON; the shell writes it 0600.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::Identity;

const FORMAT: &str = "edgeseal-keystore";

/// Argon2id cost. The defaults follow RFC 9106's second recommended option.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams { m_kib: 64 * 1024, t: 3, p: 1 }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    format: String,
    version: u32,
    name: String,
    device_id: String,
    ed25519: String,
    x25519: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<Kdf>,
    secret: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Kdf {
    alg: String,
    #[serde(flatten)]
    params: KdfParams,
    salt: String,
}

/// What a keystore file says without unlocking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub name: String,
    pub protected: bool,
}

/// Writes a keystore. `salt` must be fresh random bytes when a passphrase is given.
pub fn encode(
    identity: &Identity,
    name: &str,
    passphrase: Option<&[u8]>,
    params: KdfParams,
    salt: [u8; 16],
) -> Result<String> {
    let public = identity.public();
    let secret = identity.expose_secret_bytes();
    let (kdf, secret) = match passphrase {
        None => (None, B64.encode(secret.as_slice())),
        Some(pass) => {
            let key = derive(pass, &salt, params)?;
            let mut buf = secret.to_vec();
            seal_key(&key)
                .seal_in_place_append_tag(zero_nonce(), aead::Aad::from(aad(&public)), &mut buf)
                .map_err(|_| Error::Unencodable("keystore sealing failed"))?;
            let kdf = Kdf { alg: "argon2id".into(), params, salt: B64.encode(salt) };
            (Some(kdf), B64.encode(&buf))
        }
    };
    let file = File {
        format: FORMAT.into(),
        version: 1,
        name: name.into(),
        device_id: public.device_id().to_string(),
        ed25519: B64.encode(public.ed25519),
        x25519: B64.encode(public.x25519),
        kdf,
        secret,
    };
    Ok(serde_json::to_string_pretty(&file).expect("the keystore serialises"))
}

/// Reads the clear part of a keystore.
pub fn summary(text: &str) -> Result<Summary> {
    let file = parse(text)?;
    Ok(Summary { name: file.name, protected: file.kdf.is_some() })
}

/// The name and public identity, readable without the passphrase.
pub fn public(text: &str) -> Result<(String, crate::keys::PublicIdentity)> {
    let file = parse(text)?;
    let public = crate::keys::PublicIdentity {
        ed25519: b64_array::<32>(&file.ed25519)?,
        x25519: b64_array::<32>(&file.x25519)?,
    };
    Ok((file.name, public))
}

/// Opens a keystore, returning its name and identity.
pub fn decode(text: &str, passphrase: Option<&[u8]>) -> Result<(String, Identity)> {
    let file = parse(text)?;
    let ed25519 = b64_array::<32>(&file.ed25519)?;
    let x25519 = b64_array::<32>(&file.x25519)?;
    let public = crate::keys::PublicIdentity { ed25519, x25519 };
    let raw = Zeroizing::new(B64.decode(&file.secret).map_err(|_| Error::CorruptKeystore("secret is not base64"))?);
    let mut secret = Zeroizing::new([0u8; 96]);
    match file.kdf {
        None => {
            if raw.len() != 96 {
                return Err(Error::CorruptKeystore("secret has the wrong length"));
            }
            secret.copy_from_slice(&raw);
        }
        Some(kdf) => {
            if kdf.alg != "argon2id" {
                return Err(Error::CorruptKeystore("unknown key derivation"));
            }
            let pass = passphrase.ok_or(Error::PassphraseRequired)?;
            let salt = b64_array::<16>(&kdf.salt)?;
            let key = derive(pass, &salt, kdf.params)?;
            let mut buf = Zeroizing::new(raw.to_vec());
            let plain = seal_key(&key)
                .open_in_place(zero_nonce(), aead::Aad::from(aad(&public)), &mut buf)
                .map_err(|_| Error::WrongPassphrase)?;
            if plain.len() != 96 {
                return Err(Error::CorruptKeystore("secret has the wrong length"));
            }
            secret.copy_from_slice(plain);
        }
    }
    let identity = Identity::from_secret_bytes(&secret);
    if identity.public() != public {
        return Err(Error::CorruptKeystore("secret keys do not match the public keys"));
    }
    Ok((file.name, identity))
}

fn parse(text: &str) -> Result<File> {
    let file: File = serde_json::from_str(text).map_err(|_| Error::CorruptKeystore("not a keystore JSON document"))?;
    if file.format != FORMAT {
        return Err(Error::CorruptKeystore("not an edgeseal keystore"));
    }
    if file.version != 1 {
        return Err(Error::CorruptKeystore("unsupported keystore version"));
    }
    Ok(file)
}

fn derive(pass: &[u8], salt: &[u8; 16], p: KdfParams) -> Result<Zeroizing<[u8; 32]>> {
    let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(32))
        .map_err(|_| Error::CorruptKeystore("invalid Argon2id parameters"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(pass, salt, key.as_mut())
        .map_err(|_| Error::CorruptKeystore("invalid Argon2id parameters"))?;
    Ok(key)
}

fn seal_key(key: &[u8; 32]) -> aead::LessSafeKey {
    aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key).expect("32-byte key"))
}

/// The key is unique per salt, so a fixed nonce never repeats under one key.
fn zero_nonce() -> aead::Nonce {
    aead::Nonce::assume_unique_for_key([0u8; 12])
}

fn aad(public: &crate::keys::PublicIdentity) -> Vec<u8> {
    let mut a = b"edgeseal/v1/keystore".to_vec();
    a.extend_from_slice(&public.ed25519);
    a.extend_from_slice(&public.x25519);
    a
}

fn b64_array<const N: usize>(s: &str) -> Result<[u8; N]> {
    B64.decode(s)
        .ok()
        .and_then(|v| <[u8; N]>::try_from(v).ok())
        .ok_or(Error::CorruptKeystore("a key has the wrong encoding or length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams { m_kib: 64, t: 1, p: 1 };

    #[test]
    fn plain_round_trip() {
        let id = Identity::from_secret_bytes(&[3; 96]);
        let text = encode(&id, "pi", None, CHEAP, [0; 16]).unwrap();
        let (name, back) = decode(&text, None).unwrap();
        assert_eq!(name, "pi");
        assert_eq!(back.public(), id.public());
        assert!(!summary(&text).unwrap().protected);
    }

    #[test]
    fn passphrase_round_trip_and_wrong_passphrase() {
        let id = Identity::from_secret_bytes(&[4; 96]);
        let text = encode(&id, "pi", Some(b"correct horse"), CHEAP, [9; 16]).unwrap();
        assert!(summary(&text).unwrap().protected);
        assert_eq!(decode(&text, Some(b"correct horse")).unwrap().1.public(), id.public());
        assert_eq!(decode(&text, Some(b"wrong")).unwrap_err(), Error::WrongPassphrase);
        assert_eq!(decode(&text, None).unwrap_err(), Error::PassphraseRequired);
        // The secret never appears in clear in a protected file.
        assert!(!text.contains(&B64.encode(&id.expose_secret_bytes()[..])));
    }

    #[test]
    fn damaged_files_are_named() {
        assert!(matches!(decode("{}", None), Err(Error::CorruptKeystore(_))));
        let id = Identity::from_secret_bytes(&[5; 96]);
        let other = Identity::from_secret_bytes(&[6; 96]);
        let text = encode(&id, "pi", None, CHEAP, [0; 16]).unwrap();
        let swapped = text.replace(&B64.encode(id.public().ed25519), &B64.encode(other.public().ed25519));
        assert!(matches!(decode(&swapped, None), Err(Error::CorruptKeystore(_))));
    }
}
