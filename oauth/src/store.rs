//! Where a relay's refresh token is kept: the desktop keyring (Secret Service), in the item
//! with the attributes `xdg:schema` = [`KEYRING_SCHEMA`], `relay` = the relay's name and
//! `username` = its account, or a file of mode 0600 that the config names (`token_file`).
//! The token is never written anywhere else.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use linkrelay_config::{Auth, Relay, Secret};
use linkrelay_dbus::secrets::{self, SecretError};

use crate::{OAuthError, Token};

/// The `xdg:schema` attribute of the keyring items that hold refresh tokens.
pub const KEYRING_SCHEMA: &str = "org.linkrelay.OAuth2";

/// Where one relay's refresh token is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStore {
    /// The keyring item with these attributes.
    Keyring {
        /// `xdg:schema`, `relay` and `username`.
        attributes: BTreeMap<String, String>,
        /// The item's label, as keyring managers show it.
        label: String,
    },
    /// A file of mode 0600.
    File(PathBuf),
}

impl TokenStore {
    /// Where the refresh token of `relay` is kept; `None` if it does not use OAuth2.
    pub fn for_relay(relay: &Relay) -> Option<TokenStore> {
        let Some(Auth {
            username,
            secret: Secret::OAuth2(settings),
            ..
        }) = &relay.auth
        else {
            return None;
        };
        Some(match &settings.token_store {
            linkrelay_config::TokenStore::File(path) => TokenStore::File(path.clone()),
            linkrelay_config::TokenStore::Keyring => TokenStore::Keyring {
                attributes: [
                    ("xdg:schema", KEYRING_SCHEMA),
                    ("relay", relay.name.as_str()),
                    ("username", username.as_str()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
                label: format!(
                    "linkrelay: OAuth2 refresh token of {username} for relay {}",
                    relay.name
                ),
            },
        })
    }

    /// "the keyring item xdg:schema=... relay=... username=..." or "the file PATH".
    pub fn describe(&self) -> String {
        match self {
            TokenStore::Keyring { attributes, .. } => {
                format!("the keyring item {}", secrets::client::describe(attributes))
            }
            TokenStore::File(path) => format!("the file {}", path.display()),
        }
    }

    /// The refresh token; `None` when none is kept (not logged in).
    pub async fn load(&self) -> Result<Option<Token>, OAuthError> {
        match self {
            TokenStore::Keyring { attributes, .. } => match secrets::lookup(attributes).await {
                Ok(token) => Ok(Some(Token::new(token))),
                Err(SecretError::NotFound(..)) => Ok(None),
                Err(e) => Err(OAuthError::Store(e.to_string())),
            },
            TokenStore::File(path) => {
                let path = path.clone();
                blocking(move || read_file(&path)).await
            }
        }
    }

    /// Keeps `token`, replacing the one kept before.
    pub async fn save(&self, token: &Token) -> Result<(), OAuthError> {
        match self {
            TokenStore::Keyring { attributes, label } => {
                secrets::store(attributes, label, token.secret())
                    .await
                    .map_err(|e| OAuthError::Store(e.to_string()))
            }
            TokenStore::File(path) => {
                let (path, token) = (path.clone(), token.clone());
                blocking(move || write_file(&path, &token)).await
            }
        }
    }

    /// Forgets the token; whether there was one.
    pub async fn forget(&self) -> Result<bool, OAuthError> {
        match self {
            TokenStore::Keyring { attributes, .. } => secrets::delete(attributes)
                .await
                .map(|n| n > 0)
                .map_err(|e| OAuthError::Store(e.to_string())),
            TokenStore::File(path) => match std::fs::remove_file(path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(OAuthError::Store(format!(
                    "cannot remove the token file {}: {e}",
                    path.display()
                ))),
            },
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OAuthError> + Send + 'static,
) -> Result<T, OAuthError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OAuthError::Store(format!("the token file task failed: {e}")))?
}

/// The most a token file may hold.
const MAX_FILE: u64 = 16 * 1024;

/// Reads a token file; refuses one that others could read or write, or that is not ours.
fn read_file(path: &Path) -> Result<Option<Token>, OAuthError> {
    let fail = |why: String| OAuthError::Store(format!("the token file {}: {why}", path.display()));
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(fail(format!(
            "is owned by uid {}, not by you (uid {euid}): log in again with `linkrelay login`",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(fail(format!(
            "can be read or written by others (mode {:04o}): chmod 600 it, or remove it and log in again",
            meta.mode() & 0o7777
        )));
    }
    if meta.len() > MAX_FILE {
        return Err(fail(format!(
            "is larger than {MAX_FILE} bytes: it holds no token"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Ok(None);
    }
    Ok(Some(Token::new(token)))
}

/// Writes a token file of mode 0600 (made in the same directory, synced, then renamed over
/// the old one, so a crash leaves the old token or the new one); its directory is made 0700
/// if it is missing.
fn write_file(path: &Path, token: &Token) -> Result<(), OAuthError> {
    let fail = |why: String| OAuthError::Store(format!("the token file {}: {why}", path.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(format!("cannot make its directory: {e}")))?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| fail("is not a file name".into()))?;
    let tmp = dir.join(format!(".{}.new", name.to_string_lossy()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| fail(format!("cannot write it: {e}")))?;
    let written = (|| {
        // Whatever the umask made of it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(token.secret().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(format!("cannot write it: {e}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_file_is_private_replaced_whole_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens/relay-a.token");
        let store = TokenStore::File(path.clone());
        assert_eq!(store.load().await.unwrap(), None);
        store.save(&Token::new("first")).await.unwrap();
        store.save(&Token::new("second")).await.unwrap();
        assert_eq!(store.load().await.unwrap(), Some(Token::new("second")));
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = store.load().await.unwrap_err().to_string();
        assert!(
            e.contains("can be read or written by others (mode 0644)"),
            "{e}"
        );
        assert!(!e.contains("second"), "{e}");

        assert!(store.forget().await.unwrap());
        assert!(!store.forget().await.unwrap());
        assert_eq!(store.load().await.unwrap(), None);
    }
}
