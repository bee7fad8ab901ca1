//! Client proxies for the Secret Service (`org.freedesktop.secrets` on the session bus: GNOME
//! Keyring, KeePassXC, KWallet's bridge), one module per interface, and the secret it hands
//! out.
//!
//! Only what a lookup, a store and a delete need is declared: `OpenSession("plain")`,
//! `SearchItems(attributes)`, `Unlock` with its prompt when the matching item is locked,
//! `Item.GetSecret`, `Collection.CreateItem` in the default collection and `Item.Delete`.
//! [`client`] uses these over the workspace's zbus 6 rather than `oo7` or `secret-service`,
//! which still pull in zbus 5 (a second copy of the whole D-Bus stack).

pub mod client;
pub mod collection;
pub mod item;
pub mod prompt;
pub mod service;
pub mod session;

pub use client::{SecretError, delete, lookup, store};

use serde::{Deserialize, Serialize};
use zbus::{OwnedObjectPath, Type};

/// A secret as the Secret Service hands it out: `(oayays)`. With a "plain" session the value
/// is the secret itself.
#[derive(Debug, Deserialize, Serialize, Type)]
pub struct Secret {
    /// The session it was encoded for.
    pub session: OwnedObjectPath,
    /// Encryption parameters (empty for a "plain" session).
    pub parameters: Vec<u8>,
    /// The secret.
    pub value: Vec<u8>,
    /// Its MIME type, e.g. `text/plain`.
    pub content_type: String,
}
