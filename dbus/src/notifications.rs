//! `org.freedesktop.Notifications`: desktop notifications (Desktop Notifications Specification
//! 1.2), on the session bus.
//!
//! The proxy is our own (a dozen lines): notify-rust 4.19 is on zbus 6, but its zbus backend
//! brings zbus's own runtime beside the agent's tokio one and opens a new bus connection per
//! notification.

use std::collections::HashMap;

use zbus::{Variant, proxy};

/// The freedesktop notification service.
#[proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications"
)]
pub trait Notifications {
    /// Shows a notification; returns its id (to replace or close it later).
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        actions: &[&str],
        hints: HashMap<&str, Variant<'_>>,
        expire_timeout: i32,
    ) -> zbus::Result<u32>;

    /// What the server supports ("body", "body-markup", "actions", ...).
    fn get_capabilities(&self) -> zbus::Result<Vec<String>>;
}
