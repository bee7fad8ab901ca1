//! What can go wrong between linkrelay and an OAuth2 provider. Every text says what to do
//! and none carries a token.

/// Why no token came.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OAuthError {
    /// There is no refresh token, or the provider refused it (`invalid_grant`: revoked,
    /// expired, or the account's password changed): only a new login helps.
    #[error("{0}")]
    NeedsLogin(String),
    /// The provider answered with an error other than `invalid_grant`.
    #[error("the provider refused: {0}")]
    Refused(String),
    /// The provider could not be reached, or its answer was not one.
    #[error("cannot reach the provider: {0}")]
    Unreachable(String),
    /// The user said no, or let the login run out.
    #[error("{0}")]
    Abandoned(String),
    /// The refresh token could not be read, kept or forgotten.
    #[error("{0}")]
    Store(String),
    /// The settings cannot make a request (a URL the client library refuses, a missing
    /// endpoint for the chosen login, a failing `client_secret_command`).
    #[error("{0}")]
    Settings(String),
}

impl OAuthError {
    /// Whether only a new `linkrelay login` can help (the refresh token is missing or was
    /// refused). Everything else may pass by itself (a provider that is down) or needs the
    /// settings changed.
    pub fn needs_login(&self) -> bool {
        matches!(self, OAuthError::NeedsLogin(_))
    }
}
