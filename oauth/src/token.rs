//! Tokens, kept out of `Debug` output and so out of logs.

use std::fmt;
use std::time::Duration;

/// An access or refresh token. Its `Debug` shows only that it is one.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<String>) -> Token {
        Token(secret.into())
    }

    /// The token itself, for the one place that sends it.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// What a token endpoint gave.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The access token, for SMTP AUTH.
    pub access: Token,
    /// How long the access token lasts, if the provider said.
    pub expires_in: Option<Duration>,
    /// A new refresh token, if the provider gave one (on login, and when it rotates them).
    pub refresh: Option<Token>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let tokens = Tokens {
            access: Token::new("ya29.access-secret"),
            expires_in: Some(Duration::from_secs(3600)),
            refresh: Some(Token::new("1//refresh-secret")),
        };
        let shown = format!("{tokens:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("Token(..)"), "{shown}");
    }
}
