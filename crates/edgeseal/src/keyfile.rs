//! The keystore on disk: `<data_dir>/keystore.json`, mode 0600, in a data
//! directory of mode 0700. Passphrases come from `--passphrase-file`,
//! `EDGESEAL_PASSPHRASE` or a prompt on a terminal, in that order.

use std::fs::{self, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use edgeseal_core::keys::Identity;
use edgeseal_core::keystore::{self, KdfParams};
use zeroize::Zeroizing;

/// Where a passphrase may come from.
#[derive(Debug, Clone, Default)]
pub struct PassphraseSource {
    pub file: Option<PathBuf>,
}

impl PassphraseSource {
    /// The passphrase, if one was given; prompts on a terminal when `prompt` is set.
    fn get(&self, prompt: Option<&str>, confirm: bool) -> Result<Option<Zeroizing<String>>> {
        if let Some(f) = &self.file {
            let text = Zeroizing::new(
                fs::read_to_string(f).with_context(|| format!("cannot read the passphrase file {}", f.display()))?,
            );
            let pass = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
            if pass.is_empty() {
                bail!("the passphrase file {} is empty", f.display());
            }
            return Ok(Some(pass));
        }
        if let Ok(p) = std::env::var("EDGESEAL_PASSPHRASE") {
            if p.is_empty() {
                bail!("EDGESEAL_PASSPHRASE is set but empty");
            }
            return Ok(Some(Zeroizing::new(p)));
        }
        let Some(prompt) = prompt else {
            return Ok(None);
        };
        if !std::io::stdin().is_terminal() {
            return Ok(None);
        }
        let first = Zeroizing::new(rpassword::prompt_password(prompt)?);
        if confirm {
            let again = Zeroizing::new(rpassword::prompt_password("Repeat the passphrase: ")?);
            if first != again {
                bail!("the passphrases do not match");
            }
        }
        Ok(Some(first))
    }
}

pub fn keystore_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keystore.json")
}

/// Creates a new identity in `data_dir`. `protect` asks for a passphrase on a terminal.
pub fn init(data_dir: &Path, name: &str, pass: &PassphraseSource, protect: bool) -> Result<(Identity, bool)> {
    let path = keystore_path(data_dir);
    if path.exists() {
        bail!(
            "the data directory {} already holds an agent (keystore {}). Use another --data-dir, or remove the keystore to start over (data sealed with it becomes unreadable)",
            data_dir.display(),
            path.display()
        );
    }
    let passphrase = pass.get(protect.then_some("New keystore passphrase: "), true)?;
    if protect && passphrase.is_none() {
        bail!("--protect needs a passphrase: set EDGESEAL_PASSPHRASE, pass --passphrase-file, or run on a terminal");
    }
    let mut secret = Zeroizing::new([0u8; 96]);
    getrandom::fill(secret.as_mut()).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let identity = Identity::from_secret_bytes(&secret);
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let text =
        keystore::encode(&identity, name, passphrase.as_ref().map(|p| p.as_bytes()), KdfParams::default(), salt)?;
    create_private_dir(data_dir)?;
    write_new_private(&path, text.as_bytes())?;
    Ok((identity, passphrase.is_some()))
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
        bail!("{} holds no usable token (delete it to have a new one made)", path.display());
    }
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom::fill(raw.as_mut()).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref());
    create_private_dir(data_dir)?;
    write_new_private(&path, format!("{token}\n").as_bytes())?;
    Ok((token, path))
}

/// Creates `path` (never replacing one) with mode 0600 and `contents`, synced.
fn write_new_private(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

/// Creates the data directory with mode 0700 (keeps an existing one).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Checks that the data directory exists and holds a keystore, with advice if not.
pub fn require_initialised(data_dir: &Path) -> Result<PathBuf> {
    if !data_dir.is_dir() {
        bail!(
            "the data directory {} does not exist. Run `edgeseal init --data-dir {}` to create an agent there, or point --data-dir / EDGESEAL_DATA_DIR at an existing one",
            data_dir.display(),
            data_dir.display()
        );
    }
    let path = keystore_path(data_dir);
    if !path.exists() {
        bail!("no keystore in {}. Run `edgeseal init --data-dir {}` first", data_dir.display(), data_dir.display());
    }
    let mode = fs::metadata(&path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "the keystore {} is accessible to other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(path)
}

/// The agent's name and public identity; needs no passphrase.
pub fn load_public(data_dir: &Path) -> Result<(String, edgeseal_core::keys::PublicIdentity)> {
    let path = require_initialised(data_dir)?;
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read the keystore {}", path.display()))?;
    keystore::public(&text).with_context(|| format!("cannot use the keystore {}", path.display()))
}

/// Loads the agent's identity. Argon2id runs on a blocking thread.
pub async fn load(data_dir: &Path, pass: &PassphraseSource) -> Result<(String, Identity)> {
    let path = require_initialised(data_dir)?;
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read the keystore {}", path.display()))?;
    let summary = keystore::summary(&text).with_context(|| format!("cannot use the keystore {}", path.display()))?;
    let passphrase = if summary.protected { pass.get(Some("Keystore passphrase: "), false)? } else { None };
    if summary.protected && passphrase.is_none() {
        bail!(
            "the keystore {} is passphrase-protected: set EDGESEAL_PASSPHRASE, pass --passphrase-file, or run on a terminal",
            path.display()
        );
    }
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || keystore::decode(&text, passphrase.as_ref().map(|p| p.as_bytes())))
        .await?
        .with_context(|| format!("cannot open the keystore {shown}"))
}

/// Sets mode 0600 on a file the agent created (state and SQLite files).
pub fn make_private(path: &Path) {
    if path.exists() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
    }
}
