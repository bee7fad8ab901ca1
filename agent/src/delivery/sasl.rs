//! The SASL bearer mechanisms' first messages, pure: XOAUTH2 (Google's and Microsoft's) and
//! OAUTHBEARER (RFC 7628). Both carry an OAuth2 access token, so what they make is never
//! logged. After a refusal both servers send a 334 challenge (a JSON error); the client's
//! answer to it ([`after_refusal`]) lets the server end the exchange with its 535.

use linkrelay_config::Mechanism;

/// The `AUTH` command line for `mechanism`, with its initial response, for account `user`
/// at the relay `host:port`. `None` for the password mechanism (not a bearer one).
pub fn auth_command(
    mechanism: Mechanism,
    user: &str,
    host: &str,
    port: u16,
    token: &str,
) -> Option<String> {
    let (name, response) = match mechanism {
        Mechanism::Password => return None,
        Mechanism::Xoauth2 => ("XOAUTH2", xoauth2(user, token)),
        Mechanism::OAuthBearer => ("OAUTHBEARER", oauthbearer(user, host, port, token)),
    };
    Some(format!("AUTH {name} {}\r\n", base64(response.as_bytes())))
}

/// The mechanism's name, as EHLO's AUTH line offers it.
pub fn name(mechanism: Mechanism) -> &'static str {
    match mechanism {
        Mechanism::Password => "PLAIN",
        Mechanism::Xoauth2 => "XOAUTH2",
        Mechanism::OAuthBearer => "OAUTHBEARER",
    }
}

/// What the client answers to the 334 challenge that follows a refused token: an empty line
/// for XOAUTH2, `%x01` (base64 `AQ==`) for OAUTHBEARER (RFC 7628 section 3.2.3).
pub fn after_refusal(mechanism: Mechanism) -> &'static str {
    match mechanism {
        Mechanism::OAuthBearer => "AQ==\r\n",
        _ => "\r\n",
    }
}

/// XOAUTH2: `user=USER ^A auth=Bearer TOKEN ^A ^A`.
fn xoauth2(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
}

/// OAUTHBEARER (RFC 7628 section 3.1): a GS2 header naming the user, then key-value pairs.
fn oauthbearer(user: &str, host: &str, port: u16, token: &str) -> String {
    // RFC 5801: in a saslname, "," is "=2C" and "=" is "=3D".
    let authzid = user.replace('=', "=3D").replace(',', "=2C");
    format!("n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01")
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7628 section 4.1, the example's initial client response.
    #[test]
    fn oauthbearer_matches_the_rfc_example() {
        let command = auth_command(
            Mechanism::OAuthBearer,
            "user@example.com",
            "server.example.com",
            143,
            "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
        );
        assert_eq!(
            command.as_deref(),
            Some(
                "AUTH OAUTHBEARER bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB\r\n"
            )
        );
    }

    /// RFC 7628 section 4.3: the client's answer to the failure challenge is a lone ^A.
    #[test]
    fn after_a_refused_token_the_client_answers_as_each_mechanism_wants() {
        assert_eq!(after_refusal(Mechanism::OAuthBearer), "AQ==\r\n");
        assert_eq!(base64(b"\x01"), "AQ==");
        assert_eq!(after_refusal(Mechanism::Xoauth2), "\r\n");
    }

    /// Google's XOAUTH2 documentation: user=someuser@example.com, token ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg.
    #[test]
    fn xoauth2_matches_googles_example() {
        let command = auth_command(
            Mechanism::Xoauth2,
            "someuser@example.com",
            "smtp.gmail.com",
            587,
            "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
        );
        assert_eq!(
            command.as_deref(),
            Some(
                "AUTH XOAUTH2 dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==\r\n"
            )
        );
    }

    #[test]
    fn a_user_with_a_comma_or_equals_sign_is_escaped_in_the_gs2_header() {
        assert!(oauthbearer("a,b=c", "h", 1, "t").starts_with("n,a=a=2Cb=3Dc,\x01"));
        assert_eq!(auth_command(Mechanism::Password, "u", "h", 1, "t"), None);
    }
}
