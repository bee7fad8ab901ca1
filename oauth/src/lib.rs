//! OAuth2 for relays that take no password (Gmail, Microsoft 365, any standard provider):
//! the logins that `linkrelay login` runs, the refresh the agent runs, and where the refresh
//! token is kept.
//!
//! - [`Provider`]: one relay's `[relay.oauth2]` settings made into a client of the provider,
//!   with the `oauth2` crate over reqwest (rustls with the system's roots; hickory's resolver).
//!   [`Provider::refresh`] trades a refresh token for an access token;
//!   [`Provider::start_device_login`] and [`Provider::start_browser_login`] are the two first
//!   logins: the device authorization grant (RFC 8628), and the authorization code grant with
//!   PKCE and a loopback redirect (RFC 8252).
//! - [`TokenStore`]: the refresh token in the desktop keyring (the default) or a 0600 file.
//! - [`Token`]: a token whose `Debug` never shows it; [`OAuthError`]: what went wrong, in
//!   words that say what to do, never with a token in them.

// In tests a failed unwrap is a failed test, with its location.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod browser;
mod command;
mod device;
mod error;
mod provider;
mod store;
mod token;

pub use browser::BrowserLogin;
pub use device::DeviceLogin;
pub use error::OAuthError;
pub use provider::Provider;
pub use store::{KEYRING_SCHEMA, TokenStore};
pub use token::{Token, Tokens};
