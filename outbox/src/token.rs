//! The submission listener's login token: `<data dir>/.submission-token` (0600), the password
//! of `AUTH PLAIN` for a client the kernel cannot name (a kernel without sock_diag). The
//! owner reads it with `linkrelay token`; whoever cannot read the file cannot log in.

use std::io;
use std::path::Path;

use crate::error::OutboxError;
use crate::fsutil::{create_file, open_dir, read_file, rename_noreplace};
use crate::outbox::create_parents;

/// The token file's name in the data directory.
pub const TOKEN_FILE: &str = ".submission-token";

/// The token, if there is one.
pub fn read_token(data_dir: &Path) -> Result<Option<String>, OutboxError> {
    let path = data_dir.join(TOKEN_FILE);
    // A token is 64 hex digits and a line end; anything much longer is not one.
    match read_file(&path, 4096) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OutboxError::io(format!("reading {}", path.display()), e)),
    }
}

/// The token, made first if there is none (64 hex digits from 32 random bytes, written whole
/// under a temporary name and renamed into place, so that a reader never sees half of one
/// and two callers agree on one token). With `renew`, a new token replaces the old one.
pub fn token(data_dir: &Path, renew: bool) -> Result<String, OutboxError> {
    if !renew && let Some(token) = read_token(data_dir)? {
        return Ok(token);
    }
    create_parents(data_dir)?;
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let tmp = format!("{TOKEN_FILE}.{:08x}", rand::random::<u32>());
    let dir = open_dir(data_dir)
        .map_err(|e| OutboxError::io(format!("opening {}", data_dir.display()), e))?;
    let written = create_file(&dir, &tmp, format!("{token}\n").as_bytes())
        .and_then(|f| f.sync_all())
        .and_then(|()| {
            let (from, to) = (data_dir.join(&tmp), data_dir.join(TOKEN_FILE));
            if renew {
                std::fs::rename(from, to)
            } else {
                rename_noreplace(&from, &to)
            }
        });
    let _ = std::fs::remove_file(data_dir.join(&tmp));
    match written {
        Ok(()) => Ok(token),
        // Someone made one meanwhile: theirs it is.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_token(data_dir)?
            .ok_or_else(|| OutboxError::io("reading the token", io::Error::from(e.kind()))),
        Err(e) => Err(OutboxError::io(
            format!("writing {}", data_dir.join(TOKEN_FILE).display()),
            e,
        )),
    }
}

/// Whether `given` is `token`, in a time that does not tell how much of it matched.
pub fn token_matches(token: &str, given: &str) -> bool {
    let (a, b) = (token.as_bytes(), given.as_bytes());
    a.len() == b.len()
        && !token.is_empty()
        && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_token_is_made_once_private_and_kept_until_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("share/linkrelay");
        assert_eq!(read_token(&data).unwrap(), None);
        let first = token(&data, false).unwrap();
        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(data.join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(token(&data, false).unwrap(), first);
        assert_eq!(read_token(&data).unwrap().as_deref(), Some(first.as_str()));
        let second = token(&data, true).unwrap();
        assert_ne!(second, first);
        assert_eq!(read_token(&data).unwrap(), Some(second));
        assert_eq!(
            std::fs::read_dir(&data).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn only_the_whole_token_matches() {
        assert!(token_matches("abc", "abc"));
        for wrong in ["", "ab", "abd", "abcd"] {
            assert!(!token_matches("abc", wrong), "{wrong:?}");
        }
        assert!(!token_matches("", ""), "no token, no login");
    }
}
