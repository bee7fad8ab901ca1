//! `org.freedesktop.Secret.Collection`: a keyring, where items are created.

use std::collections::HashMap;

use zbus::{OwnedObjectPath, Variant, proxy};

use super::Secret;

/// A collection (keyring), e.g. the default one at
/// `/org/freedesktop/secrets/aliases/default`.
#[proxy(
    interface = "org.freedesktop.Secret.Collection",
    default_service = "org.freedesktop.secrets"
)]
pub trait Collection {
    /// Creates an item with `properties` (its label and attributes) holding `secret`,
    /// replacing an item with the same attributes when `replace`. Returns the item ("/" when a
    /// prompt must be shown first) and the prompt ("/" when none is needed).
    fn create_item(
        &self,
        properties: HashMap<&str, Variant<'_>>,
        secret: &Secret,
        replace: bool,
    ) -> zbus::Result<(OwnedObjectPath, OwnedObjectPath)>;
}
