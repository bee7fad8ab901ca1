//! Makes a TLS failure's text say what it means to the user: lettre's error chain repeats
//! "Connection error: " and ends in rustls's names (`UnknownIssuer`); the queue should say
//! what to check. Pure, so it is tested on its own.

/// `text` with repeated "Connection error: " prefixes collapsed, and, for a certificate
/// problem, what it means and what to do.
pub fn explain(text: &str) -> String {
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
    let hint = if rest.contains("UnknownIssuer") {
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
            explain("Connection error: Connection error: invalid peer certificate: UnknownIssuer"),
            "Connection error: invalid peer certificate: UnknownIssuer — the relay's certificate is not signed by a CA this machine trusts; if the relay uses a CA of its own, give it as ca_file"
        );
        assert!(
            explain("Connection error: invalid peer certificate: certificate not valid for name \"localhost\"")
                .ends_with("check the relay's host (is this the right server?)")
        );
        assert!(explain("invalid peer certificate: Expired").contains("clock"));
    }

    #[test]
    fn other_texts_are_left_alone() {
        assert_eq!(explain("connection refused"), "connection refused");
        assert_eq!(
            explain("Connection error: Connection refused (os error 111)"),
            "Connection error: Connection refused (os error 111)"
        );
    }
}
