/// Errors of the core crate. Cryptographic failures are deliberately coarse.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum Error {
    /// The input ended before the structure was complete.
    #[error("input is truncated")]
    Truncated,
    /// The input is malformed; the message names what was wrong.
    #[error("malformed input: {0}")]
    Invalid(&'static str),
    /// A format version this build does not understand.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// A cipher suite this build does not understand.
    #[error("unsupported cipher suite {0}")]
    UnsupportedSuite(u8),
    /// Authenticated decryption failed: wrong key, or the bytes were altered.
    #[error("could not open the sealed batch (wrong key or altered bytes)")]
    CouldNotOpen,
    /// The reader holds keys of the batch's epoch, but none for its time (a grant of a time range).
    #[error("not granted: the keys held do not reach this batch's time")]
    NotGranted,
    /// A value the caller supplied cannot be encoded.
    #[error("cannot encode: {0}")]
    Unencodable(&'static str),
    /// A stream name that is not allowed.
    #[error("invalid stream name {0:?}: use 1-64 characters from a-z, A-Z, 0-9, '.', '_', '-'")]
    InvalidStreamName(String),
    /// The keystore's passphrase is wrong.
    #[error("wrong passphrase for the keystore")]
    WrongPassphrase,
    /// The keystore is protected and no passphrase was given.
    #[error("the keystore is passphrase-protected and no passphrase was given")]
    PassphraseRequired,
    /// Pairing did not complete; the message says why.
    #[error("pairing failed: {0}")]
    PairingFailed(&'static str),
    /// The keystore file is damaged.
    #[error("the keystore is damaged: {0}")]
    CorruptKeystore(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;
