//! A small Secret Service client: look up, store and delete the secret of the item with given
//! attributes, in the default collection, through a "plain" session (what `secret-tool` uses
//! too: the secret crosses the session bus, which only this user can connect to,
//! unencrypted). A locked item or collection is unlocked first, showing the service's prompt
//! if it wants one. The texts of [`SecretError`] name the attributes, never a secret.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use zbus::{Connection, ObjectPath, OwnedObjectPath, OwnedVariant, Variant};

use super::Secret;
use super::collection::CollectionProxy;
use super::item::ItemProxy;
use super::prompt::PromptProxy;
use super::service::ServiceProxy;
use super::session::SessionProxy;

/// How long a whole lookup, store or delete may take, an unlock prompt answered by the user
/// included.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(90);

/// Why the Secret Service did not do what was asked. The texts name the attributes, never a
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
    /// The item (or the collection) is locked and the unlock prompt was dismissed (or could not
    /// be shown).
    #[error(
        "the keyring item with {0} is locked and was not unlocked (the prompt was dismissed or could not be shown): unlock the keyring, then `linkrelay flush`"
    )]
    Locked(String),
    /// The secret is not UTF-8 text, or is empty.
    #[error("the keyring item with {0} holds {1}, not a password")]
    NotAPassword(String, &'static str),
    /// There is no default collection to store an item in.
    #[error(
        "the keyring has no default collection to store the item with {0} in: create one (Seahorse: File, New, Password Keyring, then Set as Default)"
    )]
    NoDefaultCollection(String),
    /// The call took too long (an unanswered prompt).
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
pub fn describe(attributes: &BTreeMap<String, String>) -> String {
    attributes
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `service smtp username bob`, as `secret-tool` takes them (quoted for a shell where needed).
pub fn secret_tool_args(attributes: &BTreeMap<String, String>) -> String {
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

async fn session_bus() -> Result<Connection, SecretError> {
    Connection::session().await.map_err(|e| match e {
        zbus::Error::Address(_) => SecretError::NoService,
        other => SecretError::Bus(format!("cannot connect to the session bus: {other}")),
    })
}

/// Runs `op` within [`LOOKUP_TIMEOUT`].
async fn bounded<T>(op: impl Future<Output = Result<T, SecretError>>) -> Result<T, SecretError> {
    tokio::time::timeout(LOOKUP_TIMEOUT, op)
        .await
        .unwrap_or(Err(SecretError::Timeout))
}

fn query(attributes: &BTreeMap<String, String>) -> HashMap<&str, &str> {
    attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Looks up the secret of the item with these attributes on the session bus, as text without
/// a final line end (`secret-tool` stores what it reads, a typed newline included).
pub async fn lookup(attributes: &BTreeMap<String, String>) -> Result<String, SecretError> {
    let conn = session_bus().await?;
    lookup_on(&conn, attributes).await
}

/// [`lookup`] through `conn`.
pub async fn lookup_on(
    conn: &Connection,
    attributes: &BTreeMap<String, String>,
) -> Result<String, SecretError> {
    bounded(lookup_inner(conn, attributes)).await
}

async fn lookup_inner(
    conn: &Connection,
    attributes: &BTreeMap<String, String>,
) -> Result<String, SecretError> {
    let what = describe(attributes);
    let service = ServiceProxy::new(conn).await.map_err(bus)?;
    let Some(item) = unlocked_items(conn, &service, attributes, &what)
        .await?
        .into_iter()
        .next()
    else {
        return Err(SecretError::NotFound(what, secret_tool_args(attributes)));
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
    close_session(conn, &session_path).await;
    let secret = secret.map_err(bus)?;
    let text = String::from_utf8(secret.value)
        .map_err(|_| SecretError::NotAPassword(what.clone(), "bytes that are not UTF-8 text"))?;
    let text = text.trim_end_matches(['\r', '\n']).to_owned();
    if text.is_empty() {
        return Err(SecretError::NotAPassword(what, "an empty secret"));
    }
    Ok(text)
}

/// The items with these attributes, unlocked (with a prompt if needed); empty when there is
/// none.
async fn unlocked_items(
    conn: &Connection,
    service: &ServiceProxy<'_>,
    attributes: &BTreeMap<String, String>,
    what: &str,
) -> Result<Vec<OwnedObjectPath>, SecretError> {
    let (mut unlocked, locked) = service.search_items(query(attributes)).await.map_err(bus)?;
    if !locked.is_empty() {
        unlock(conn, service, &locked, what).await?;
        let (now_unlocked, still_locked) =
            service.search_items(query(attributes)).await.map_err(bus)?;
        if now_unlocked.is_empty() && !still_locked.is_empty() {
            return Err(SecretError::Locked(what.to_owned()));
        }
        unlocked = now_unlocked;
    }
    Ok(unlocked)
}

/// Stores `secret` in the default collection under `attributes` with `label`, replacing the
/// item that had these attributes.
pub async fn store(
    attributes: &BTreeMap<String, String>,
    label: &str,
    secret: &str,
) -> Result<(), SecretError> {
    let conn = session_bus().await?;
    store_on(&conn, attributes, label, secret).await
}

/// [`store`] through `conn`.
pub async fn store_on(
    conn: &Connection,
    attributes: &BTreeMap<String, String>,
    label: &str,
    secret: &str,
) -> Result<(), SecretError> {
    bounded(store_inner(conn, attributes, label, secret)).await
}

async fn store_inner(
    conn: &Connection,
    attributes: &BTreeMap<String, String>,
    label: &str,
    secret: &str,
) -> Result<(), SecretError> {
    let what = describe(attributes);
    let service = ServiceProxy::new(conn).await.map_err(bus)?;
    let collection = service.read_alias("default").await.map_err(bus)?;
    if collection.as_str() == "/" {
        return Err(SecretError::NoDefaultCollection(what));
    }
    unlock(conn, &service, std::slice::from_ref(&collection), &what).await?;
    let (_, session_path) = service
        .open_session("plain", &Variant::from(""))
        .await
        .map_err(bus)?;
    let properties = HashMap::from([
        ("org.freedesktop.Secret.Item.Label", Variant::from(label)),
        (
            "org.freedesktop.Secret.Item.Attributes",
            Variant::from(query(attributes)),
        ),
    ]);
    let value = Secret {
        session: session_path.clone(),
        parameters: Vec::new(),
        value: secret.as_bytes().to_vec(),
        content_type: "text/plain".to_owned(),
    };
    let created = async {
        CollectionProxy::builder(conn)
            .path(collection)
            .build()
            .await?
            .create_item(properties, &value, true)
            .await
    }
    .await;
    close_session(conn, &session_path).await;
    let (_, prompt) = created.map_err(bus)?;
    if !prompt_accepted(conn, prompt).await? {
        return Err(SecretError::Locked(what));
    }
    Ok(())
}

/// Deletes every item with these attributes; returns how many there were.
pub async fn delete(attributes: &BTreeMap<String, String>) -> Result<usize, SecretError> {
    let conn = session_bus().await?;
    delete_on(&conn, attributes).await
}

/// [`delete`] through `conn`.
pub async fn delete_on(
    conn: &Connection,
    attributes: &BTreeMap<String, String>,
) -> Result<usize, SecretError> {
    bounded(delete_inner(conn, attributes)).await
}

async fn delete_inner(
    conn: &Connection,
    attributes: &BTreeMap<String, String>,
) -> Result<usize, SecretError> {
    let what = describe(attributes);
    let service = ServiceProxy::new(conn).await.map_err(bus)?;
    let items = unlocked_items(conn, &service, attributes, &what).await?;
    for item in &items {
        let prompt = ItemProxy::builder(conn)
            .path(item)
            .build()
            .await
            .map_err(bus)?
            .delete()
            .await
            .map_err(bus)?;
        if !prompt_accepted(conn, prompt).await? {
            return Err(SecretError::Locked(what));
        }
    }
    Ok(items.len())
}

/// Closes a session; whatever came of its use, it is not needed any more.
async fn close_session(conn: &Connection, path: &ObjectPath<'_>) {
    if let Ok(session) = SessionProxy::builder(conn).path(path).build().await {
        let _ = session.close().await;
    }
}

/// Unlocks `locked`, showing the Secret Service's prompt if it wants one.
async fn unlock(
    conn: &Connection,
    service: &ServiceProxy<'_>,
    locked: &[OwnedObjectPath],
    what: &str,
) -> Result<(), SecretError> {
    let paths: Vec<ObjectPath<'_>> = locked.iter().map(|p| p.as_ref()).collect();
    let (_, prompt) = service.unlock(&paths).await.map_err(bus)?;
    if prompt_accepted(conn, prompt).await? {
        Ok(())
    } else {
        Err(SecretError::Locked(what.to_owned()))
    }
}

/// Shows the prompt at `path` ("/" is no prompt) and waits for its answer: whether it was
/// accepted rather than dismissed.
async fn prompt_accepted(conn: &Connection, path: OwnedObjectPath) -> Result<bool, SecretError> {
    if path.as_str() == "/" {
        return Ok(true);
    }
    let prompt = PromptProxy::builder(conn)
        .path(path)
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
        return Ok(false);
    };
    let (dismissed, _result): (bool, OwnedVariant) = msg
        .body()
        .deserialize()
        .map_err(|e| SecretError::Bus(e.to_string()))?;
    Ok(!dismissed)
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
