//! A small PKI: a CA, server certificates with DNS and IP subject alternative
//! names, and client certificates (their common name is the MQTT user name
//! under mosquitto's `use_identity_as_username`). Keys are ECDSA P-256.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::{Duration, OffsetDateTime};

use crate::Error;

/// A PEM private key: printed as `[redacted]`, reached through [`KeyPem::expose_secret`].
#[derive(Clone)]
pub struct KeyPem(String);

impl KeyPem {
    pub fn new(pem: String) -> Self {
        KeyPem(pem)
    }

    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A certificate and its key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: String,
    pub key: KeyPem,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone)]
pub enum Leaf {
    Server { dns: Vec<String>, ips: Vec<IpAddr> },
    Client { name: String },
}

fn validity(params: &mut CertificateParams, now: OffsetDateTime, days: i64) {
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

/// A new self-signed CA valid for `days`.
pub fn new_ca(common_name: &str, now: OffsetDateTime, days: i64) -> Result<Issued, Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "edgeseal");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, now, days);
    let cert = params.self_signed(&key)?;
    Ok(Issued { cert: cert.pem(), key: KeyPem(key.serialize_pem()) })
}

/// A certificate signed by `ca`.
pub fn issue(ca: &Issued, leaf: &Leaf, now: OffsetDateTime, days: i64) -> Result<Issued, Error> {
    let ca_key = KeyPair::from_pem(ca.key.expose_secret())?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    match leaf {
        Leaf::Server { dns, ips } => {
            if dns.is_empty() && ips.is_empty() {
                return Err(Error::BadSetting(
                    "a server certificate needs at least one --dns name or --ip address".into(),
                ));
            }
            let cn = dns.first().cloned().or_else(|| ips.first().map(ToString::to_string)).unwrap_or_default();
            params.distinguished_name.push(DnType::CommonName, cn);
            for d in dns {
                params.subject_alt_names.push(SanType::DnsName(
                    d.clone().try_into().map_err(|_| Error::BadSetting(format!("{d:?} is not a DNS name")))?,
                ));
            }
            for ip in ips {
                params.subject_alt_names.push(SanType::IpAddress(*ip));
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Leaf::Client { name } => {
            if name.is_empty() || name.contains(['/', '+', '#']) {
                return Err(Error::BadSetting(format!("{name:?} is not usable as an MQTT user name")));
            }
            params.distinguished_name.push(DnType::CommonName, name.clone());
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    validity(&mut params, now, days);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued { cert: cert.pem(), key: KeyPem(key.serialize_pem()) })
}

/// Reads `STEM.pem` and `STEM-key.pem` from `dir` (as [`save`] wrote them).
pub fn load(dir: &Path, stem: &str) -> std::io::Result<Issued> {
    Ok(Issued {
        cert: fs::read_to_string(dir.join(format!("{stem}.pem")))?,
        key: KeyPem(fs::read_to_string(dir.join(format!("{stem}-key.pem")))?),
    })
}

/// Writes `STEM.pem` (0644) and `STEM-key.pem` (0600) into `dir`, replacing old ones.
pub fn save(dir: &Path, stem: &str, issued: &Issued) -> Result<[PathBuf; 2], Error> {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    write_file(&cert, &issued.cert, false)?;
    write_file(&key, issued.key.expose_secret(), true)?;
    Ok([cert, key])
}

/// Writes a file afresh, mode 0600 when `private` (0644 otherwise).
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    let io = |source: std::io::Error| Error::Io { what: "cannot write", path: path.to_path_buf(), source };
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_server_client() {
        let now = OffsetDateTime::now_utc();
        let ca = new_ca("edgeseal test CA", now, 30).unwrap();
        assert!(ca.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(format!("{:?}", ca.key), "[redacted]");
        let server = issue(
            &ca,
            &Leaf::Server { dns: vec!["localhost".into()], ips: vec!["127.0.0.1".parse().unwrap()] },
            now,
            30,
        )
        .unwrap();
        assert!(server.key.expose_secret().contains("PRIVATE KEY"));
        assert!(issue(&ca, &Leaf::Server { dns: vec![], ips: vec![] }, now, 30).is_err());
        assert!(issue(&ca, &Leaf::Client { name: "a/b".into() }, now, 30).is_err());
        issue(&ca, &Leaf::Client { name: "pi-kitchen".into() }, now, 30).unwrap();
    }
}
