//! Where a relay's password comes from: its `password_command` or the Secret Service
//! (`password_secret`). The password itself is never logged nor put into an error.

use linkrelay_config::Relay;
use tracing::debug;

use crate::delivery::secrets;
use crate::delivery::smtp::run_password_command;

/// The password for `relay`, `None` if it has no password source. The error says what went
/// wrong, without the password.
pub async fn fetch(relay: &Relay) -> Result<Option<String>, String> {
    if let Some(attributes) = &relay.password_secret {
        debug!(relay = %relay.name, "looking up the password in the Secret Service");
        return secrets::lookup(attributes)
            .await
            .map(Some)
            .map_err(|e| e.to_string());
    }
    match &relay.password_command {
        Some(command) => {
            debug!(relay = %relay.name, "running password_command");
            run_password_command(command, relay.timeout).await.map(Some)
        }
        None => Ok(None),
    }
}
