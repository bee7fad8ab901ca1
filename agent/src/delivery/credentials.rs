//! A relay's password: the first line its `password_command` prints, or a Secret Service item
//! (`password_secret`). The password itself is never logged nor put into an error: errors name
//! the command's exit status or the item's attributes.
//!
//! The Secret Service (`org.freedesktop.secrets` on the session bus: GNOME Keyring, KeePassXC,
//! KWallet's bridge) is reached by a small client over the workspace's zbus 6 (the proxies are
//! in `linkrelay_dbus::secrets`) rather than `oo7` or `secret-service`, which still pull in
//! zbus 5 (a second copy of the whole D-Bus stack). A plain lookup needs four calls: `OpenSession("plain")`, `SearchItems(attributes)`, `Unlock`
//! (with its prompt) when the matching item is locked, and `Item.GetSecret`. A "plain" session
//! is what `secret-tool` uses too: the secret crosses the session bus, which only this user can
//! connect to, unencrypted.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use linkrelay_config::{self as config, Relay};
use linkrelay_dbus::secrets::item::ItemProxy;
use linkrelay_dbus::secrets::prompt::PromptProxy;
use linkrelay_dbus::secrets::service::ServiceProxy;
use linkrelay_dbus::secrets::session::SessionProxy;
use tracing::debug;
use zbus::{Connection, ObjectPath, OwnedObjectPath, OwnedVariant, Variant};

/// The password for `relay`, `None` if it does not log in. The error says what went wrong,
/// without the password.
pub(crate) async fn fetch(relay: &Relay) -> Result<Option<String>, String> {
    let Some(auth) = &relay.auth else {
        return Ok(None);
    };
    match &auth.secret {
        config::Secret::Keyring(attributes) => {
            debug!(relay = %relay.name, "looking up the password in the Secret Service");
            lookup(attributes)
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

/// How long a whole lookup may take, an unlock prompt answered by the user included.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(90);

/// Why no password came from the Secret Service. The texts name the attributes, never a
/// secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// Nothing answers as `org.freedesktop.secrets` on the session bus.
    #[error(
        "no Secret Service on the session bus (org.freedesktop.secrets): start the desktop keyring (gnome-keyring, KeePassXC with Secret Service integration) or use password_command"
    )]
    NoService,
    /// No item has these attributes.
    #[error("no keyring item with {0}: store it with `secret-tool store --label=linkrelay {1}`")]
    NotFound(String, String),
    /// The item is locked and the unlock prompt was dismissed (or could not be shown).
    #[error(
        "the keyring item with {0} is locked and was not unlocked (the prompt was dismissed or could not be shown): unlock the keyring, then `linkrelay flush`"
    )]
    Locked(String),
    /// The secret is not UTF-8 text, or is empty.
    #[error("the keyring item with {0} holds {1}, not a password")]
    NotAPassword(String, &'static str),
    /// The lookup took too long (an unanswered prompt).
    #[error("the Secret Service did not answer within {}s", LOOKUP_TIMEOUT.as_secs())]
    Timeout,
    /// A D-Bus failure.
    #[error("Secret Service: {0}")]
    Bus(String),
}

fn bus(e: zbus::Error) -> SecretError {
    const GONE: [&str; 2] = [
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
    ];
    let gone = match &e {
        zbus::Error::MethodError(name, _, _) => GONE.contains(&name.as_str()),
        zbus::Error::FDO(fdo) => matches!(
            **fdo,
            zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_)
        ),
        _ => false,
    };
    if gone {
        SecretError::NoService
    } else {
        SecretError::Bus(e.to_string())
    }
}

/// `service="smtp" username="bob"`, for messages.
fn describe(attributes: &BTreeMap<String, String>) -> String {
    attributes
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `service smtp username bob`, as `secret-tool` takes them.
fn secret_tool_args(attributes: &BTreeMap<String, String>) -> String {
    attributes
        .iter()
        .flat_map(|(k, v)| [k, v])
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@+:/".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Looks up the password with these attributes on the session bus.
pub async fn lookup(attributes: &BTreeMap<String, String>) -> Result<String, SecretError> {
    let conn = Connection::session().await.map_err(|e| match e {
        zbus::Error::Address(_) => SecretError::NoService,
        other => SecretError::Bus(format!("cannot connect to the session bus: {other}")),
    })?;
    lookup_on(&conn, attributes).await
}

/// Looks up the password with these attributes through `conn`, within [`LOOKUP_TIMEOUT`].
async fn lookup_on(
    conn: &Connection,
    attributes: &BTreeMap<String, String>,
) -> Result<String, SecretError> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, lookup_inner(conn, attributes)).await {
        Ok(result) => result,
        Err(_) => Err(SecretError::Timeout),
    }
}

async fn lookup_inner(
    conn: &Connection,
    attributes: &BTreeMap<String, String>,
) -> Result<String, SecretError> {
    let what = describe(attributes);
    let service = ServiceProxy::new(conn).await.map_err(bus)?;
    let query: HashMap<&str, &str> = attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    let (unlocked, locked) = service.search_items(query.clone()).await.map_err(bus)?;
    let item = match (unlocked.into_iter().next(), locked.is_empty()) {
        (Some(item), _) => item,
        (None, true) => {
            return Err(SecretError::NotFound(what, secret_tool_args(attributes)));
        }
        (None, false) => {
            unlock(conn, &service, &locked, &what).await?;
            let (unlocked, _) = service.search_items(query).await.map_err(bus)?;
            unlocked
                .into_iter()
                .next()
                .ok_or_else(|| SecretError::Locked(what.clone()))?
        }
    };

    let (_, session_path) = service
        .open_session("plain", &Variant::from(""))
        .await
        .map_err(bus)?;
    let secret = async {
        ItemProxy::builder(conn)
            .path(item)
            .build()
            .await?
            .get_secret(&session_path)
            .await
    }
    .await;
    // The session is not needed any more, whatever came of it.
    if let Ok(session) = SessionProxy::builder(conn)
        .path(&session_path)
        .build()
        .await
    {
        let _ = session.close().await;
    }
    let secret = secret.map_err(bus)?;
    let text = String::from_utf8(secret.value)
        .map_err(|_| SecretError::NotAPassword(what.clone(), "bytes that are not UTF-8 text"))?;
    // secret-tool stores what it reads, a final newline included when one was typed.
    let password = text.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(SecretError::NotAPassword(what, "an empty secret"));
    }
    Ok(password)
}

/// Unlocks `locked`, showing the Secret Service's prompt if it wants one.
async fn unlock(
    conn: &Connection,
    service: &ServiceProxy<'_>,
    locked: &[OwnedObjectPath],
    what: &str,
) -> Result<(), SecretError> {
    let paths: Vec<ObjectPath<'_>> = locked.iter().map(|p| p.as_ref()).collect();
    let (_, prompt_path) = service.unlock(&paths).await.map_err(bus)?;
    if prompt_path.as_str() == "/" {
        return Ok(());
    }
    let prompt = PromptProxy::builder(conn)
        .path(prompt_path)
        .build()
        .await
        .map_err(bus)?;
    // Subscribe before prompting, so that a quick answer is not missed.
    let mut completed = prompt
        .inner()
        .receive_signal("Completed")
        .await
        .map_err(bus)?;
    prompt.prompt("").await.map_err(bus)?;
    let Some(msg) = completed.next().await else {
        return Err(SecretError::Locked(what.to_owned()));
    };
    let (dismissed, _result): (bool, OwnedVariant) = msg
        .body()
        .deserialize()
        .map_err(|e| SecretError::Bus(e.to_string()))?;
    if dismissed {
        return Err(SecretError::Locked(what.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_attributes_and_how_to_store_them() {
        let attrs: BTreeMap<String, String> = [
            ("service".to_owned(), "smtp".to_owned()),
            ("username".to_owned(), "bob o'neil".to_owned()),
        ]
        .into();
        let e = SecretError::NotFound(describe(&attrs), secret_tool_args(&attrs));
        assert_eq!(
            e.to_string(),
            r#"no keyring item with service="smtp" username="bob o'neil": store it with `secret-tool store --label=linkrelay service smtp username 'bob o'\''neil'`"#
        );
    }
}
