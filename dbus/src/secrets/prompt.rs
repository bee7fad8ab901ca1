//! `org.freedesktop.Secret.Prompt`: a prompt the service shows the user (to unlock a keyring).

use zbus::proxy;

/// A prompt; its `Completed(dismissed, result)` signal says how it ended.
#[proxy(
    interface = "org.freedesktop.Secret.Prompt",
    default_service = "org.freedesktop.secrets"
)]
pub trait Prompt {
    /// Shows the prompt; `window_id` is the parent window ("" for none).
    fn prompt(&self, window_id: &str) -> zbus::Result<()>;
}
