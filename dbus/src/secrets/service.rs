//! `org.freedesktop.Secret.Service`: sessions, searching and unlocking.

use std::collections::HashMap;

use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant, Variant, proxy};

/// The Secret Service itself, at `/org/freedesktop/secrets`.
#[proxy(
    interface = "org.freedesktop.Secret.Service",
    default_service = "org.freedesktop.secrets",
    default_path = "/org/freedesktop/secrets"
)]
pub trait Service {
    /// Opens a session for passing secrets; `algorithm` "plain" passes them as they are.
    /// Returns the algorithm's output and the session's path.
    fn open_session(
        &self,
        algorithm: &str,
        input: &Variant<'_>,
    ) -> zbus::Result<(OwnedVariant, OwnedObjectPath)>;

    /// The items with all these attributes: (unlocked ones, locked ones).
    fn search_items(
        &self,
        attributes: HashMap<&str, &str>,
    ) -> zbus::Result<(Vec<OwnedObjectPath>, Vec<OwnedObjectPath>)>;

    /// The collection that `name` (e.g. "default") stands for, or "/" when there is none.
    fn read_alias(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// Unlocks `objects`: (those unlocked at once, a prompt to show for the others, or "/").
    fn unlock(
        &self,
        objects: &[ObjectPath<'_>],
    ) -> zbus::Result<(Vec<OwnedObjectPath>, OwnedObjectPath)>;
}
