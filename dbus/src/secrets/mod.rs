//! Client proxies for the Secret Service (`org.freedesktop.secrets` on the session bus: GNOME
//! Keyring, KeePassXC, KWallet's bridge), one module per interface, and the secret it hands
//! out.
//!
//! Only what a plain password lookup needs is declared: `OpenSession("plain")`,
//! `SearchItems(attributes)`, `Unlock` with its prompt when the matching item is locked, and
//! `Item.GetSecret`; and, for `linkrelay setup`, `Collection.CreateItem`. The agent's client (`agent/src/delivery/credentials.rs`) uses these over
//! the workspace's zbus 6 rather than `oo7` or `secret-service`, which still pull in zbus 5.

pub mod collection;
pub mod item;
pub mod prompt;
pub mod service;
pub mod session;

use serde::{Deserialize, Serialize};
use zbus::{OwnedObjectPath, Type};

/// A secret as the Secret Service hands it out and takes it in: `(oayays)`. With a "plain" session the value
/// is the secret itself.
#[derive(Debug, Serialize, Deserialize, Type)]
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
