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

/// The password for `relay`, `None` if it does not log in. The error says what went wrong,
/// without the password.
pub(crate) async fn fetch(relay: &Relay) -> Result<Option<String>, String> {
    let Some(auth) = &relay.auth else {
        return Ok(None);
    };
    match &auth.secret {
        config::Secret::Keyring(attributes) => {
            debug!(relay = %relay.name, "looking up the password in the Secret Service");
            secrets::lookup(attributes)
                .await
                .map(Some)
                .map_err(|e| e.to_string())
        }
        config::Secret::Command(command) => {
            debug!(relay = %relay.name, "running password_command");
            run_password_command(command, relay.timeout).await.map(Some)
        }
        config::Secret::OAuth2(_) => Err(format!(
            "relay {} gets its tokens with OAuth2, which this agent cannot do yet",
            relay.name
        )),
    }
}

/// Runs a relay's `password_command` with `sh -c` and returns the first line of its output.
/// The password is never logged; a failing command is reported without its output. A command
/// that has not finished within `limit` (a pinentry nobody answers) is killed: a user's
/// outbox must not hang on it.
async fn run_password_command(command: &str, limit: Duration) -> Result<String, String> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run password_command: {e}"))?;
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.map_err(|e| format!("cannot run password_command: {e}"))?,
        Err(_) => {
            return Err(format!(
                "password_command did not finish within {}",
                humantime::format_duration(limit)
            ));
        }
    };
    if !out.status.success() {
        return Err(format!("password_command exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err("password_command printed nothing".into());
    }
    Ok(line)
}
