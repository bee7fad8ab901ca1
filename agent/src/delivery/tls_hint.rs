//! Makes a TLS failure's text say what it means to the user: lettre's error chain repeats
//! "Connection error: " and ends in rustls's names (`UnknownIssuer`); the queue should say
//! what to check. Pure, so it is tested on its own.

use std::path::Path;

/// `text` with repeated "Connection error: " prefixes collapsed, and, for a certificate
/// problem, what it means and what to do. `ca_file` is the relay's `ca_file` setting: with
/// one given, a certificate of an unknown issuer means that this CA did not sign it.
pub fn explain(text: &str, ca_file: Option<&Path>) -> String {
    const PREFIX: &str = "Connection error: ";
    let mut rest = text;
    let mut prefixed = false;
    while let Some(r) = rest.strip_prefix(PREFIX) {
        rest = r;
        prefixed = true;
    }
    let mut out = if prefixed {
        format!("{PREFIX}{rest}")
    } else {
        rest.to_owned()
    };
    let unknown_issuer = rest.contains("UnknownIssuer");
    if let (true, Some(ca)) = (unknown_issuer, ca_file) {
        out.push_str(&format!(
            " — the CA in ca_file {} does not sign the relay's certificate: check that it is the CA the relay's certificate was issued by",
            ca.display()
        ));
        return out;
    }
    let hint = if unknown_issuer {
        Some(
            "the relay's certificate is not signed by a CA this machine trusts; if the relay uses a CA of its own, give it as ca_file",
        )
    } else if rest.contains("not valid for name") || rest.contains("NotValidForName") {
        Some(
            "the certificate is for another name: check the relay's host (is this the right server?)",
        )
    } else if rest.contains("Expired") {
        Some("the relay's certificate has expired, or this machine's clock is wrong")
    } else if rest.contains("invalid peer certificate") {
        Some("the relay's certificate was refused")
    } else {
        None
    };
    if let Some(hint) = hint {
        out.push_str(" — ");
        out.push_str(hint);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_problems_say_what_to_do() {
        assert_eq!(
            explain(
                "Connection error: Connection error: invalid peer certificate: UnknownIssuer",
                None
            ),
            "Connection error: invalid peer certificate: UnknownIssuer — the relay's certificate is not signed by a CA this machine trusts; if the relay uses a CA of its own, give it as ca_file"
        );
        assert!(
            explain(
                "Connection error: invalid peer certificate: certificate not valid for name \"localhost\"",
                None
            )
                .ends_with("check the relay's host (is this the right server?)")
        );
        assert!(explain("invalid peer certificate: Expired", None).contains("clock"));
    }

    #[test]
    fn an_unknown_issuer_with_a_ca_file_given_says_that_ca_does_not_sign_the_certificate() {
        let text = explain(
            "Connection error: invalid peer certificate: UnknownIssuer",
            Some(Path::new("/etc/linkrelay/relay-ca.pem")),
        );
        assert_eq!(
            text,
            "Connection error: invalid peer certificate: UnknownIssuer — the CA in ca_file /etc/linkrelay/relay-ca.pem does not sign the relay's certificate: check that it is the CA the relay's certificate was issued by"
        );
        assert!(!text.contains("give it as ca_file"), "{text}");
        let expired = explain(
            "invalid peer certificate: Expired",
            Some(Path::new("/ca.pem")),
        );
        assert!(expired.contains("clock"), "{expired}");
    }

    #[test]
    fn other_texts_are_left_alone() {
        assert_eq!(explain("connection refused", None), "connection refused");
        assert_eq!(
            explain("Connection error: Connection refused (os error 111)", None),
            "Connection error: Connection refused (os error 111)"
        );
    }
}
