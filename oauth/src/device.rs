//! The device authorization grant (RFC 8628): the provider gives a short code, the user types
//! it at the provider's page on any device with a browser, and we poll the token endpoint
//! until they have.

use std::time::Duration;

use oauth2::StandardDeviceAuthorizationResponse;

use crate::provider::{Exchange, tokens};
use crate::{OAuthError, Provider, Tokens};

/// A device login under way: what to show the user.
#[derive(Debug)]
pub struct DeviceLogin {
    details: StandardDeviceAuthorizationResponse,
}

impl DeviceLogin {
    /// The code to type.
    pub fn user_code(&self) -> &str {
        self.details.user_code().secret()
    }

    /// Where to type it.
    pub fn verification_uri(&self) -> &str {
        self.details.verification_uri().as_str()
    }

    /// A URL with the code in it, if the provider gives one (no typing needed).
    pub fn verification_uri_complete(&self) -> Option<&str> {
        self.details
            .verification_uri_complete()
            .map(|u| u.secret().as_str())
    }

    /// How long the code is valid.
    pub fn expires_in(&self) -> Duration {
        self.details.expires_in()
    }
}

impl Provider {
    /// Asks the provider for a device code.
    pub async fn start_device_login(&self) -> Result<DeviceLogin, OAuthError> {
        let request = self.client.exchange_device_code().map_err(|_| {
            OAuthError::Settings(format!(
                "relay {} has no `device_url`: log in with --browser",
                self.relay
            ))
        })?;
        let details = request
            .add_scopes(self.scopes.iter().cloned())
            .request_async(&self.http)
            .await
            .map_err(|e| self.request_error(e, Exchange::Login))?;
        Ok(DeviceLogin { details })
    }

    /// Polls the token endpoint (at the interval the provider asked for) until the user has
    /// entered the code, refused, or let it expire.
    pub async fn finish_device_login(&self, login: &DeviceLogin) -> Result<Tokens, OAuthError> {
        let response = self
            .client
            .exchange_device_access_token(&login.details)
            .request_async(&self.http, tokio::time::sleep, Some(login.expires_in()))
            .await
            .map_err(|e| self.request_error(e, Exchange::Login))?;
        Ok(tokens(&response))
    }
}
