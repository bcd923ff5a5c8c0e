//! The data directory (mode 0700): the keystore `keystore.json` (0600), the
//! API token, and the lock that makes one process its writer. Passphrases
//! are the caller's business (the binary reads a file, the environment or a
//! prompt); functions here take one, or ask for one only when the keystore
//! is protected.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use edgeseal_core::keys::{Identity, PublicIdentity};
use edgeseal_core::keystore::{self, KdfParams};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// A passphrase, wiped from memory when dropped.
pub type Passphrase = Zeroizing<String>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { what, path: path.to_path_buf(), source }
}

fn randomness(e: getrandom::Error) -> Error {
    Error::Internal(format!("no system randomness: {e}"))
}

pub fn keystore_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keystore.json")
}

/// Fails when `data_dir` already holds an agent.
pub fn check_new(data_dir: &Path) -> Result<()> {
    let path = keystore_path(data_dir);
    if path.exists() {
        return Err(Error::Busy(format!(
            "the data directory {} already holds an agent (keystore {}). Use another --data-dir, or remove the keystore to start over (data sealed with it becomes unreadable)",
            data_dir.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Creates a new identity in `data_dir`, under `passphrase` when one is given.
pub fn init(data_dir: &Path, name: &str, passphrase: Option<&Passphrase>) -> Result<Identity> {
    let identity = random_identity()?;
    restore(data_dir, name, &identity, passphrase)?;
    Ok(identity)
}

/// Writes `identity` as the keystore of a new agent in `data_dir` (a new
/// one, or one restored from a backup), under `passphrase` when one is given.
pub fn restore(data_dir: &Path, name: &str, identity: &Identity, passphrase: Option<&Passphrase>) -> Result<()> {
    check_new(data_dir)?;
    let text = encode(identity, name, passphrase)?;
    create_private_dir(data_dir)?;
    write_new_private(&keystore_path(data_dir), text.as_bytes())
}

fn encode(identity: &Identity, name: &str, passphrase: Option<&Passphrase>) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(randomness)?;
    Ok(keystore::encode(identity, name, passphrase.map(|p| p.as_bytes()), KdfParams::default(), salt)?)
}

/// Writes a backup of the identity (its signing and agreement keys and the
/// root of every stream key) to `to`, a new file of mode 0600, always sealed
/// under `passphrase` (Argon2id): the keystore format, so `init --from`
/// reads it back.
pub fn export(to: &Path, name: &str, identity: &Identity, passphrase: &Passphrase) -> Result<()> {
    let text = encode(identity, name, Some(passphrase))?;
    write_new_private(to, text.as_bytes())
}

/// Reads a backup written by [`export`]: the agent's name and identity.
pub fn read_backup(from: &Path, passphrase: &Passphrase) -> Result<(String, Identity)> {
    let text = fs::read_to_string(from).map_err(io("cannot read the backup", from))?;
    let bad = |e: edgeseal_core::Error| Error::Keystore(format!("cannot use the backup {}: {e}", from.display()));
    if !keystore::summary(&text).map_err(bad)?.protected {
        return Err(Error::Keystore(format!(
            "{} is a keystore without a passphrase, not a backup made by `edgeseal keys export`",
            from.display()
        )));
    }
    keystore::decode(&text, Some(passphrase.as_bytes())).map_err(bad)
}

/// A new identity from the system's randomness (an agent's, or a throwaway one for benchmarks and tests).
pub fn random_identity() -> Result<Identity> {
    let mut secret = Zeroizing::new([0u8; 96]);
    getrandom::fill(secret.as_mut()).map_err(randomness)?;
    Ok(Identity::from_secret_bytes(&secret))
}

/// The HTTP API's bearer token in `<data_dir>/api-token` (mode 0600), created
/// on first use. Returns the token and the file.
pub fn api_token(data_dir: &Path) -> Result<(String, PathBuf)> {
    let path = data_dir.join("api-token");
    if let Ok(t) = fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if t.len() >= 32 {
            return Ok((t, path));
        }
        return Err(Error::Config(format!(
            "{} holds no usable token (delete it to have a new one made)",
            path.display()
        )));
    }
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom::fill(raw.as_mut()).map_err(randomness)?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref());
    create_private_dir(data_dir)?;
    write_new_private(&path, format!("{token}\n").as_bytes())?;
    Ok((token, path))
}

/// Creates `path` (never replacing one) with mode 0600 and `contents`, synced.
fn write_new_private(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io("cannot create", path))?;
    f.write_all(contents).and_then(|()| f.sync_all()).map_err(io("cannot write", path))
}

/// Creates the data directory with mode 0700 (keeps an existing one).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io("cannot create the data directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("cannot make private", dir))?;
    }
    Ok(())
}

/// Checks that the data directory exists and holds a keystore, with advice if not.
pub fn require_initialised(data_dir: &Path) -> Result<PathBuf> {
    if !data_dir.is_dir() {
        return Err(Error::NotInitialised(format!(
            "the data directory {} does not exist. Run `edgeseal init --data-dir {}` to create an agent there, or point --data-dir / EDGESEAL_DATA_DIR at an existing one",
            data_dir.display(),
            data_dir.display()
        )));
    }
    let path = keystore_path(data_dir);
    if !path.exists() {
        return Err(Error::NotInitialised(format!(
            "no keystore in {}. Run `edgeseal init --data-dir {}` first",
            data_dir.display(),
            data_dir.display()
        )));
    }
    let mode = fs::metadata(&path).map_err(io("cannot read", &path))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::Keystore(format!(
            "the keystore {} is accessible to other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    Ok(path)
}

/// The agent's name and public identity; needs no passphrase.
pub fn load_public(data_dir: &Path) -> Result<(String, PublicIdentity)> {
    let path = require_initialised(data_dir)?;
    let text = fs::read_to_string(&path).map_err(io("cannot read the keystore", &path))?;
    keystore::public(&text).map_err(|e| Error::Keystore(format!("cannot use the keystore {}: {e}", path.display())))
}

/// Loads the agent's identity; `ask` gives the passphrase and is called only
/// when the keystore is protected. Argon2id runs on a blocking thread.
pub async fn load(data_dir: &Path, ask: impl FnOnce() -> Result<Option<Passphrase>>) -> Result<(String, Identity)> {
    let path = require_initialised(data_dir)?;
    let text = fs::read_to_string(&path).map_err(io("cannot read the keystore", &path))?;
    let summary = keystore::summary(&text)
        .map_err(|e| Error::Keystore(format!("cannot use the keystore {}: {e}", path.display())))?;
    let passphrase = if summary.protected { ask()? } else { None };
    if summary.protected && passphrase.is_none() {
        return Err(Error::Keystore(format!(
            "the keystore {} is passphrase-protected: set EDGESEAL_PASSPHRASE, pass --passphrase-file, or run on a terminal",
            path.display()
        )));
    }
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || keystore::decode(&text, passphrase.as_ref().map(|p| p.as_bytes())))
        .await
        .map_err(|e| Error::Internal(format!("the keystore task failed: {e}")))?
        .map_err(|e| Error::Keystore(format!("cannot open the keystore {shown}: {e}")))
}

/// Sets mode 0600 on a file the agent created (state and SQLite files).
pub fn make_private(path: &Path) {
    if path.exists() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
    }
}

/// The process that holds a data directory, as its lock file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// The command it runs: `up`, `watch`, `pair`, `share`, …
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            0 => f.write_str("another edgeseal process"),
            pid => write!(f, "`edgeseal {}` (pid {pid})", self.command),
        }
    }
}

/// The data directory's writer lock: an exclusive `flock` on `<data dir>/lock`,
/// held by the one process that advances chain state (`up`, `watch`, `pair`,
/// `share`, `revoke`, `keys rotate`, `init`) for as long as this value lives.
/// The kernel releases it when the process dies, so `kill -9` never leaves a
/// stale lock behind.
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

pub fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join("lock")
}

/// Where the running agent listens for the CLI's commands (a Unix socket, 0600).
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent.sock")
}

impl DirLock {
    /// Takes the lock for `command`, waiting up to `patience` while another
    /// short command holds it; a long-running holder (`up`, `watch`, `pair`)
    /// is returned at once as `Err(holder)`.
    pub fn acquire(data_dir: &Path, command: &str, patience: Duration) -> Result<std::result::Result<DirLock, Holder>> {
        create_private_dir(data_dir)?;
        let path = lock_path(data_dir);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io("cannot open the lock file", &path))?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    let holder = read_holder(&mut file);
                    let long = matches!(holder.command.as_str(), "up" | "watch" | "pair");
                    if long || start.elapsed() >= patience {
                        return Ok(Err(holder));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(fs::TryLockError::Error(e)) => return Err(io("cannot lock", &path)(e)),
            }
        }
        let text = format!("{} {command}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(text.as_bytes()))
            .map_err(io("cannot write the lock file", &path))?;
        Ok(Ok(DirLock { _file: file }))
    }
}

fn read_holder(file: &mut fs::File) -> Holder {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    let mut words = text.split_whitespace();
    let pid = words.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Holder { pid, command: words.next().unwrap_or("").to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("edgeseal-lock-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn one_holder_at_a_time_and_it_is_named() {
        let d = dir("one");
        let held = DirLock::acquire(&d, "up", Duration::ZERO).unwrap().unwrap();
        let other = DirLock::acquire(&d, "share", Duration::from_millis(100)).unwrap().unwrap_err();
        assert_eq!(other, Holder { pid: std::process::id(), command: "up".into() });
        assert_eq!(other.to_string(), format!("`edgeseal up` (pid {})", std::process::id()));
        drop(held);
        let again = DirLock::acquire(&d, "share", Duration::ZERO).unwrap();
        assert!(again.is_ok());
        let mode = fs::metadata(lock_path(&d)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = fs::remove_dir_all(&d);
    }
}
