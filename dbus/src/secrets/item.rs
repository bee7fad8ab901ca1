//! `org.freedesktop.Secret.Item`: one stored secret.

use zbus::{ObjectPath, OwnedObjectPath, proxy};

use super::Secret;

/// A keyring item.
#[proxy(
    interface = "org.freedesktop.Secret.Item",
    default_service = "org.freedesktop.secrets"
)]
pub trait Item {
    /// The item's secret, encoded for `session`.
    fn get_secret(&self, session: &ObjectPath<'_>) -> zbus::Result<Secret>;

    /// Deletes the item; returns a prompt to show, or "/" when none is needed.
    fn delete(&self) -> zbus::Result<OwnedObjectPath>;
}
