//! Where the keystore passphrase comes from: `--passphrase-file`,
//! `EDGESEAL_PASSPHRASE` or a prompt on a terminal, in that order; and a
//! backup's, from `--backup-passphrase-file`, `EDGESEAL_BACKUP_PASSPHRASE` or a prompt.

use std::io::IsTerminal;
use std::path::PathBuf;

use edgeseal_agent::datadir::Passphrase;
use edgeseal_agent::{Error, Result};
use zeroize::Zeroizing;

#[derive(Debug, Clone)]
pub struct PassphraseSource {
    pub file: Option<PathBuf>,
    /// The environment variable that may hold it.
    pub env: &'static str,
}

impl Default for PassphraseSource {
    fn default() -> Self {
        PassphraseSource { file: None, env: "EDGESEAL_PASSPHRASE" }
    }
}

impl PassphraseSource {
    /// Where a backup's passphrase comes from.
    pub fn backup(file: Option<PathBuf>) -> PassphraseSource {
        PassphraseSource { file, env: "EDGESEAL_BACKUP_PASSPHRASE" }
    }

    /// The passphrase, if one was given; prompts on a terminal when `prompt` is set.
    pub fn get(&self, prompt: Option<&str>, confirm: bool) -> Result<Option<Passphrase>> {
        if let Some(f) = &self.file {
            let text = Zeroizing::new(std::fs::read_to_string(f).map_err(|source| Error::Io {
                what: "cannot read the passphrase file",
                path: f.clone(),
                source,
            })?);
            let pass = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
            if pass.is_empty() {
                return Err(Error::bad(format!("the passphrase file {} is empty", f.display())));
            }
            return Ok(Some(pass));
        }
        if let Ok(p) = std::env::var(self.env) {
            if p.is_empty() {
                return Err(Error::bad(format!("{} is set but empty", self.env)));
            }
            return Ok(Some(Zeroizing::new(p)));
        }
        let Some(prompt) = prompt else {
            return Ok(None);
        };
        if !std::io::stdin().is_terminal() {
            return Ok(None);
        }
        let read =
            |p: &str| rpassword::prompt_password(p).map_err(|e| Error::bad(format!("cannot read the passphrase: {e}")));
        let first = Zeroizing::new(read(prompt)?);
        if confirm {
            let again = Zeroizing::new(read("Repeat the passphrase: ")?);
            if first != again {
                return Err(Error::bad("the passphrases do not match"));
            }
        }
        Ok(Some(first))
    }

    /// The passphrase of an existing keystore, asked only when it is protected.
    pub fn existing(&self) -> impl FnOnce() -> Result<Option<Passphrase>> + '_ {
        move || self.get(Some("Keystore passphrase: "), false)
    }
}
