//! `org.freedesktop.Secret.Session`: a session opened for passing secrets.

use zbus::proxy;

/// An open session.
#[proxy(
    interface = "org.freedesktop.Secret.Session",
    default_service = "org.freedesktop.secrets"
)]
pub trait Session {
    /// Ends the session.
    fn close(&self) -> zbus::Result<()>;
}
