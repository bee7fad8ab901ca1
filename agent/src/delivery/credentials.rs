//! A relay's password: the first line its `password_command` prints, or a Secret Service item
//! (`password_secret`). The password itself is never logged nor put into an error: errors name
//! the command's exit status or the item's attributes.
//!
//! The Secret Service (`org.freedesktop.secrets` on the session bus: GNOME Keyring, KeePassXC,
//! KWallet's bridge) is reached by the small client of `linkrelay_dbus::secrets` (four calls
//! for a lookup: `OpenSession("plain")`, `SearchItems(attributes)`, `Unlock` with its prompt
//! when the matching item is locked, and `Item.GetSecret`).

use std::time::Duration;

use linkrelay_config::{self as config, Relay};
use linkrelay_dbus::secrets;
use tracing::debug;

use crate::delivery::outcome::{Outcome, Stage};
use crate::delivery::smtp::Verdict;
use crate::delivery::tokens;

/// Why no password or token came: what went wrong, without the secret, and whether only a
/// `linkrelay login` helps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CredentialError {
    pub text: String,
    pub needs_login: bool,
}

impl From<String> for CredentialError {
    fn from(text: String) -> Self {
        CredentialError {
            text,
            needs_login: false,
        }
    }
}

impl From<linkrelay_oauth::OAuthError> for CredentialError {
    fn from(e: linkrelay_oauth::OAuthError) -> Self {
        CredentialError {
            needs_login: e.needs_login(),
            text: e.to_string(),
        }
    }
}

/// The password for `relay`, `None` if it does not log in. The error says what went wrong,
/// without the password.
pub(crate) async fn fetch(relay: &Relay) -> Result<Option<String>, CredentialError> {
    let Some(auth) = &relay.auth else {
        return Ok(None);
    };
    match &auth.secret {
        config::Secret::Keyring(attributes) => {
            debug!(relay = %relay.name, "looking up the password in the Secret Service");
            secrets::lookup(attributes)
                .await
                .map(Some)
                .map_err(|e| e.to_string().into())
        }
        config::Secret::Command(command) => {
            debug!(relay = %relay.name, "running password_command");
            Ok(Some(run_password_command(command, relay.timeout).await?))
        }
        config::Secret::OAuth2(settings) => Ok(Some(
            tokens::access_token(relay, settings, false)
                .await?
                .secret()
                .to_owned(),
        )),
    }
}

/// A new access token for an OAuth2 relay, not the one in memory (the relay refused it).
pub(crate) async fn fetch_renewed(relay: &Relay) -> Result<Option<String>, CredentialError> {
    match relay.auth.as_ref().map(|a| &a.secret) {
        Some(config::Secret::OAuth2(settings)) => Ok(Some(
            tokens::access_token(relay, settings, true)
                .await?
                .secret()
                .to_owned(),
        )),
        _ => fetch(relay).await,
    }
}

/// Whether `relay` gets access tokens by OAuth2.
pub(crate) fn is_oauth2(relay: &Relay) -> bool {
    matches!(
        relay.auth.as_ref().map(|a| &a.secret),
        Some(config::Secret::OAuth2(_))
    )
}

/// Whether `v`, from opening a session with `relay`, is the relay refusing an OAuth2 access
/// token (a 5xx to AUTH): worth one refresh and one more try.
pub(crate) fn refused_token(relay: &Relay, v: &Verdict) -> bool {
    is_oauth2(relay) && v.stage == Stage::Auth && v.code.is_some_and(|c| (500..600).contains(&c))
}

/// The verdict of a password or token source that gave nothing: the mail waits (a relay
/// that needs a login is held, never failed).
pub(crate) fn verdict(e: CredentialError) -> Verdict {
    Verdict {
        stage: Stage::Auth,
        code: None,
        text: e.text,
        outcome: Outcome::Deferred,
    }
}

/// The most a `password_command` may print before its first line end. A password is far
/// shorter; `cat /dev/zero` is not a password and must not grow the agent.
pub const MAX_PASSWORD_LINE: usize = 4096;

/// Runs a relay's `password_command` with `sh -c` and returns the first line of its output.
/// The password is never logged; a failing command is reported without its output. A command
/// that has not finished within `limit` (a pinentry nobody answers) is killed: a user's
/// outbox must not hang on it.
///
/// Only the first line is kept, and only if it ends within [`MAX_PASSWORD_LINE`] bytes; the
/// rest of the output is read and dropped until the command exits. The command runs in a
/// process group of its own, and when it is given up on (too long a line, the time limit, the
/// attempt abandoned) the whole group is killed, so that a child it started cannot outlive it.
async fn run_password_command(command: &str, limit: Duration) -> Result<String, String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run password_command: {e}"))?;
    let group = GroupKiller(child.id());
    let stdout = child.stdout.take();
    let run = async {
        let Some(stdout) = stdout else {
            return Err("cannot read password_command's output".to_owned());
        };
        let mut stdout = tokio::io::BufReader::new(stdout);
        let line = first_line(&mut stdout).await?;
        // The rest is not kept, but read: a command killed by a closed pipe would fail.
        tokio::io::copy(&mut stdout, &mut tokio::io::sink())
            .await
            .map_err(|e| format!("cannot read password_command's output: {e}"))?;
        let status = child
            .wait()
            .await
            .map_err(|e| format!("cannot run password_command: {e}"))?;
        Ok((line, status))
    };
    let (line, status) = match tokio::time::timeout(limit, run).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(format!(
                "password_command did not finish within {}",
                humantime::format_duration(limit)
            ));
        }
    };
    // It exited and was reaped: its group id may be another's now.
    group.disarm();
    if !status.success() {
        return Err(format!("password_command exited with {status}"));
    }
    if line.is_empty() {
        return Err("password_command printed nothing".into());
    }
    Ok(line)
}

/// The first line `out` gives, without its end; at most [`MAX_PASSWORD_LINE`] bytes.
async fn first_line(out: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> Result<String, String> {
    use tokio::io::AsyncBufReadExt;
    let mut line = Vec::new();
    let cap = MAX_PASSWORD_LINE as u64 + 1;
    let n = tokio::io::AsyncReadExt::take(&mut *out, cap)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("cannot read password_command's output: {e}"))?;
    if n as u64 == cap && !line.ends_with(b"\n") {
        return Err(format!(
            "password_command printed more than {MAX_PASSWORD_LINE} bytes without a line end"
        ));
    }
    let text = String::from_utf8_lossy(&line);
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// Kills the process group of a command when dropped, unless disarmed once the command was
/// reaped. While the command has not been reaped its pid (the group's id) cannot be reused.
struct GroupKiller(Option<u32>);

impl GroupKiller {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        let Some(pid) = self
            .0
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        else {
            return;
        };
        if let Err(e) = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL) {
            debug!(error = %e, "cannot kill password_command's process group");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_password_is_the_first_line_whatever_follows_it() {
        let run = |c: &'static str| run_password_command(c, Duration::from_secs(5));
        // `pass show` prints the password, then more lines.
        assert_eq!(run("printf 'pw\\nuser: bob\\n'").await, Ok("pw".into()));
        assert_eq!(run("printf 'pw\\r\\n'").await, Ok("pw".into()));
        assert_eq!(run("printf pw").await, Ok("pw".into()));
        // What follows may be long: it is read and dropped.
        assert_eq!(
            run("echo pw; head -c 1000000 /dev/zero").await,
            Ok("pw".into())
        );
        let longest = format!("head -c {MAX_PASSWORD_LINE} /dev/zero | tr '\\0' x; echo");
        let longest = run_password_command(&longest, Duration::from_secs(5)).await;
        assert_eq!(longest.map(|p| p.len()), Ok(MAX_PASSWORD_LINE));
        assert_eq!(
            run("echo pw; exit 3").await,
            Err("password_command exited with exit status: 3".into())
        );
        assert_eq!(
            run("true").await,
            Err("password_command printed nothing".into())
        );
    }
}
