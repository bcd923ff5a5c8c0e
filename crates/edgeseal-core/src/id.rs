//! Identifiers that appear in clear in every sealed batch.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A device: the first 16 bytes of a hash of its Ed25519 public key, so a
/// device id names exactly one signing key (see [`crate::keys::device_id_of`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; 16]);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl FromStr for DeviceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| Error::Invalid("a device id is 32 hex digits"))?;
        Ok(DeviceId(b))
    }
}

/// A stream name: 1 to 64 characters from `A-Za-z0-9._-`. The set is safe in
/// MQTT topics, file names and SQL identifiers alike.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    pub const MAX_LEN: usize = 64;

    pub fn new(s: impl Into<String>) -> Result<Self, Error> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok { Ok(StreamName(s)) } else { Err(Error::InvalidStreamName(s)) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl FromStr for StreamName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        StreamName::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        assert!(StreamName::new("temperature").is_ok());
        assert!(StreamName::new("hwmon.coretemp-1_a").is_ok());
        for bad in ["", "a/b", "a+b", "#", "ü", &"x".repeat(65)] {
            assert!(StreamName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_id_text_round_trip() {
        let d = DeviceId([7; 16]);
        assert_eq!(d.to_string().parse::<DeviceId>().unwrap(), d);
        assert!("xyz".parse::<DeviceId>().is_err());
    }
}
