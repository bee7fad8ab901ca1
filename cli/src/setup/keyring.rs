//! Putting a relay's password into the desktop keyring, as `secret-tool store` does: the
//! Secret Service on the session bus, the default collection, a "plain" session. The password
//! is read from the terminal without echo (or a line of standard input) and never written
//! anywhere else.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use linkrelay_dbus::secrets::service::ServiceProxy;

/// Whether the keyring holds an item with exactly these attributes (locked or not).
pub async fn has(conn: &zbus::Connection, attributes: &[(String, String)]) -> anyhow::Result<bool> {
    let service = ServiceProxy::new(conn).await?;
    let query: HashMap<&str, &str> = attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (unlocked, locked) = service.search_items(query).await.context(
        "cannot search the keyring (is a Secret Service such as gnome-keyring running?)",
    )?;
    Ok(!unlocked.is_empty() || !locked.is_empty())
}

/// Stores `password` under `attributes` in the default collection, replacing an item with the
/// same attributes (the Secret Service client the agent uses to read it back).
pub async fn store(
    conn: &zbus::Connection,
    attributes: &[(String, String)],
    label: &str,
    password: &str,
) -> anyhow::Result<()> {
    let attributes: BTreeMap<String, String> = attributes.iter().cloned().collect();
    linkrelay_dbus::secrets::client::store_on(conn, &attributes, label, password)
        .await
        .context("the keyring did not store the password")
}

/// Reads a password: from the terminal with echo off, after `prompt` on stderr; else one line
/// of standard input.
pub fn read_password(prompt: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let fd = std::io::stdin();
        let before = rustix::termios::tcgetattr(&fd).context("reading the terminal's settings")?;
        let mut quiet = before.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &quiet)
            .context("turning echo off")?;
        let read = stdin.lock().read_line(&mut line);
        let _ = rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &before);
        eprintln!();
        read.context("reading the password")?;
    } else {
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
    }
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("no password given");
    }
    Ok(password)
}
