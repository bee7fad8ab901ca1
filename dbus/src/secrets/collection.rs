//! `org.freedesktop.Secret.Collection`: storing a secret in a keyring.

use std::collections::HashMap;

use zbus::{OwnedObjectPath, Variant, proxy};

use super::Secret;

/// The item property that holds the label a keyring manager shows.
pub const LABEL: &str = "org.freedesktop.Secret.Item.Label";
/// The item property that holds the attributes a secret is found by.
pub const ATTRIBUTES: &str = "org.freedesktop.Secret.Item.Attributes";

/// A collection of items; the default one (where `secret-tool store` writes) is at
/// `/org/freedesktop/secrets/aliases/default`.
#[proxy(
    interface = "org.freedesktop.Secret.Collection",
    default_service = "org.freedesktop.secrets",
    default_path = "/org/freedesktop/secrets/aliases/default"
)]
pub trait Collection {
    /// Stores `secret` as a new item with `properties` ([`LABEL`], [`ATTRIBUTES`]), replacing
    /// an item with the same attributes when `replace`. Returns the item and a prompt to show
    /// first ("/" when none is needed, the item then being stored).
    fn create_item(
        &self,
        properties: HashMap<&str, Variant<'_>>,
        secret: &Secret,
        replace: bool,
    ) -> zbus::Result<(OwnedObjectPath, OwnedObjectPath)>;
}
