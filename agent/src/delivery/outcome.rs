//! Outcome classification: what a server's reply means for the message. Pure and table-tested.
//!
//! The rule that sets linkrelay apart from the MTAs it replaces: a relay that will not take our
//! mail *on this link* (authentication, "relay access denied", most 5.7.x policy replies) is not a
//! failure of the message. The message is kept and another relay (or a later link) is tried.

/// Where in the SMTP session a reply came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// TCP connect (and implicit TLS).
    Connect,
    /// The server's greeting and EHLO.
    Greeting,
    /// STARTTLS and the TLS handshake.
    Tls,
    /// AUTH.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO (one recipient).
    Rcpt,
    /// The DATA command.
    Data,
    /// The reply after the message's final dot.
    Message,
}

impl Stage {
    /// Lowercase name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Tls => "starttls",
            Stage::Auth => "auth",
            Stage::Mail => "mail from",
            Stage::Rcpt => "rcpt to",
            Stage::Data => "data",
            Stage::Message => "end of data",
        }
    }
}

/// What an attempt means for the message (or one recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted.
    Sent,
    /// Try again later (4xx, network trouble, timeouts).
    Deferred,
    /// This relay will not take our mail on this link: try another relay, keep the message.
    RelayRefused,
    /// The message (or this recipient) itself is bad: stop and tell the user.
    Failed,
}

/// Words that mean "not from here / not without credentials", whatever the code.
const REFUSAL_WORDS: &[&str] = &[
    "relay access denied",
    "relaying denied",
    "relay not permitted",
    "relaying not permitted",
    "relaying disallowed",
    "relay disallowed",
    "not permitted to relay",
    "unable to relay",
    "we do not relay",
    "authentication required",
    "must issue a starttls",
    "client host rejected",
    "access denied",
];

/// Words of a 5.7.x reply after the data that blame the content rather than us.
const CONTENT_WORDS: &[&str] = &["spam", "virus", "content", "message rejected", "malware"];

/// The enhanced status code (RFC 3463) at the start of a reply's text, e.g. (5, 7, 1).
///
/// Strictly as RFC 3463 writes it: `class.subject.detail`, a class of one digit (2, 4 or 5),
/// subject and detail of one to three digits (no signs, no spaces: found by fuzzing, `"+5"`
/// and `"05"` once parsed as 5).
pub fn enhanced_code(text: &str) -> Option<(u8, u16, u16)> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let number = |part: Option<&str>, max_len: usize| -> Option<u16> {
        let part = part?;
        if part.is_empty() || part.len() > max_len || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let class = number(parts.next(), 1)?;
    let subject = number(parts.next(), 3)?;
    let detail = number(parts.next(), 3)?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some((class as u8, subject, detail))
}

/// Enhanced codes and words with which relays refuse a password because they want OAuth2:
/// Microsoft's `550 5.7.30 Basic authentication is not supported for Client Submission` and
/// `535 5.7.139 ... basic authentication is disabled`, Google's `534 5.7.9 Application-specific
/// password required` and `534 5.7.14 Please log in with your web browser`.
const OAUTH2_CODES: &[(u8, u16, u16)] = &[(5, 7, 30), (5, 7, 139), (5, 7, 9), (5, 7, 14)];
const OAUTH2_WORDS: &[&str] = &[
    "basic authentication is not supported",
    "basic authentication is disabled",
    "application-specific password required",
    "please log in with your web browser",
];

/// Whether a refusal of a password says that the relay wants OAuth2 instead.
pub fn wants_oauth2(code: Option<u16>, text: &str) -> bool {
    if !code.is_some_and(|c| (500..600).contains(&c)) {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    enhanced_code(text).is_some_and(|e| OAUTH2_CODES.contains(&e))
        || OAUTH2_WORDS.iter().any(|w| lower.contains(w))
}

/// Classifies one reply. `code` is `None` for transport trouble (connection refused or dropped,
/// timeout, TLS failure, malformed reply): those are always worth another try.
pub fn classify(stage: Stage, code: Option<u16>, text: &str) -> Outcome {
    let Some(code) = code else {
        return Outcome::Deferred;
    };
    match code {
        200..=399 => return Outcome::Sent,
        400..=499 => return Outcome::Deferred,
        500..=599 => {}
        _ => return Outcome::Deferred, // nonsense codes: do not lose the message over them
    }
    let lower = text.to_ascii_lowercase();
    let refusal_words = REFUSAL_WORDS.iter().any(|w| lower.contains(w));
    let policy = matches!(enhanced_code(text), Some((5, 7, _)));
    if refusal_words || matches!(code, 530 | 535 | 538) {
        return Outcome::RelayRefused;
    }
    match stage {
        // Before any message is named, a permanent reply is about us (this client, this link).
        Stage::Connect | Stage::Greeting | Stage::Tls | Stage::Auth => Outcome::RelayRefused,
        Stage::Mail => match code {
            552 => Outcome::Failed, // too big for this relay's policy... and any
            501 if !policy => Outcome::Failed, // sender syntax
            _ => Outcome::RelayRefused, // sender not allowed through this relay
        },
        Stage::Rcpt => {
            if policy || matches!(code, 500 | 502 | 503 | 504) {
                // Policy, or a relay that lost track of the conversation ("503 need MAIL
                // command"): not this recipient's fault.
                Outcome::RelayRefused
            } else {
                Outcome::Failed // unknown user, bad syntax: this recipient is bad
            }
        }
        Stage::Data => Outcome::RelayRefused,
        Stage::Message => {
            if policy && !CONTENT_WORDS.iter().any(|w| lower.contains(w)) {
                Outcome::RelayRefused
            } else {
                Outcome::Failed // too big, content rejected: the message itself
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;
    use Stage::*;

    #[test]
    fn table() {
        let cases: &[(Stage, Option<u16>, &str, Outcome)] = &[
            (Message, Some(250), "2.0.0 Ok: queued as 1234", Sent),
            (Connect, None, "connection refused", Deferred),
            (Greeting, None, "timed out", Deferred),
            (Greeting, Some(421), "4.3.2 Service not available", Deferred),
            (
                Greeting,
                Some(554),
                "5.7.1 Client host blocked",
                RelayRefused,
            ),
            (Tls, None, "invalid peer certificate", Deferred),
            (
                Auth,
                Some(535),
                "5.7.8 Authentication credentials invalid",
                RelayRefused,
            ),
            (
                Auth,
                Some(454),
                "4.7.0 Temporary authentication failure",
                Deferred,
            ),
            (
                Mail,
                Some(530),
                "5.7.0 Authentication required",
                RelayRefused,
            ),
            (
                Mail,
                Some(530),
                "5.7.0 Must issue a STARTTLS command first",
                RelayRefused,
            ),
            (
                Mail,
                Some(553),
                "5.7.1 Sender address rejected: not owned by user",
                RelayRefused,
            ),
            (Mail, Some(501), "5.1.7 Bad sender address syntax", Failed),
            (
                Mail,
                Some(552),
                "5.3.4 Message size exceeds fixed limit",
                Failed,
            ),
            (
                Rcpt,
                Some(554),
                "5.7.1 <bob@b.example>: Recipient address rejected: Relay access denied",
                RelayRefused,
            ),
            (Rcpt, Some(550), "5.7.1 Relaying denied", RelayRefused),
            (Rcpt, Some(553), "Relaying disallowed", RelayRefused),
            (
                Rcpt,
                Some(550),
                "5.1.1 <nobody@b.example>: Recipient address rejected: User unknown",
                Failed,
            ),
            (
                Rcpt,
                Some(501),
                "5.1.3 Bad recipient address syntax",
                Failed,
            ),
            (
                Rcpt,
                Some(450),
                "4.2.0 Greylisted, try again later",
                Deferred,
            ),
            (
                Rcpt,
                Some(503),
                "5.5.1 Error: need MAIL command",
                RelayRefused,
            ),
            (
                Rcpt,
                Some(502),
                "5.5.2 Error: command not recognized",
                RelayRefused,
            ),
            (
                Rcpt,
                Some(550),
                "5.1.1 <nobody@b.example>: Recipient address rejected: User unknown in virtual mailbox table see https://example.org/help",
                Failed,
            ),
            (
                Rcpt,
                Some(421),
                "4.4.2 relay.test Error: timeout exceeded",
                Deferred,
            ),
            (
                Mail,
                Some(451),
                "4.3.0 Error: queue file write error",
                Deferred,
            ),
            (
                Mail,
                None,
                "network error: Connection reset by peer",
                Deferred,
            ),
            (
                Data,
                Some(451),
                "4.3.0 Error: queue file write error",
                Deferred,
            ),
            (Data, None, "response error: incomplete response", Deferred),
            (
                Message,
                None,
                "network error: Connection reset by peer",
                Deferred,
            ),
            (Message, None, "timed out after 5s", Deferred),
            (
                Tls,
                Some(454),
                "4.7.0 TLS not available due to local problem",
                Deferred,
            ),
            (
                Greeting,
                Some(550),
                "5.5.4 Syntax: EHLO hostname",
                RelayRefused,
            ),
            (Greeting, Some(220), "relay.test ESMTP", Sent),
            (Rcpt, Some(250), "2.1.5 Ok", Sent),
            (Message, Some(0), "garbage", Deferred),
            (
                Data,
                Some(554),
                "5.5.1 Error: no valid recipients",
                RelayRefused,
            ),
            (
                Message,
                Some(552),
                "5.3.4 Message size exceeds fixed limit",
                Failed,
            ),
            (Message, Some(554), "5.7.1 Message rejected as spam", Failed),
            (Message, Some(554), "5.6.0 Malformed message", Failed),
            (
                Message,
                Some(550),
                "5.7.1 Delivery not authorized",
                RelayRefused,
            ),
            (
                Message,
                Some(451),
                "4.3.0 Local error in processing",
                Deferred,
            ),
            (Message, Some(999), "nonsense", Deferred),
        ];
        for (stage, code, text, want) in cases {
            assert_eq!(
                classify(*stage, *code, text),
                *want,
                "{stage:?} {code:?} {text}"
            );
        }
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(enhanced_code("5.7.1 Relay access denied"), Some((5, 7, 1)));
        assert_eq!(enhanced_code("4.2.0 later"), Some((4, 2, 0)));
        assert_eq!(enhanced_code("Relay access denied"), None);
        assert_eq!(enhanced_code("1.2.3 x"), None);
        assert_eq!(enhanced_code(""), None);
        assert_eq!(enhanced_code("5.7.100 x"), Some((5, 7, 100)));
        // Found by fuzzing: signs, leading zeros and long parts are not enhanced codes.
        assert_eq!(enhanced_code("+5.7.1 Relay access denied"), None);
        assert_eq!(enhanced_code("05.7.1 x"), None);
        assert_eq!(enhanced_code("5.+7.1 x"), None);
        assert_eq!(enhanced_code("5.7.1000 x"), None);
        assert_eq!(enhanced_code("5..1 x"), None);
    }

    #[test]
    fn refusals_of_a_password_that_mean_the_relay_wants_oauth2() {
        let table: &[(Option<u16>, &str, bool)] = &[
            (
                Some(550),
                "5.7.30 Basic authentication is not supported for Client Submission",
                true,
            ),
            (
                Some(535),
                "5.7.139 Authentication unsuccessful, basic authentication is disabled",
                true,
            ),
            (
                Some(534),
                "5.7.9 Application-specific password required. Learn more at https://support.google.com/mail/?p=InvalidSecondFactor",
                true,
            ),
            (
                Some(534),
                "5.7.14 Please log in with your web browser",
                true,
            ),
            (Some(535), "5.7.8 Username and Password not accepted", false),
            (Some(454), "4.7.0 Too many login attempts", false),
            (None, "basic authentication is not supported", false),
        ];
        for (code, text, wants) in table {
            assert_eq!(wants_oauth2(*code, text), *wants, "{code:?} {text}");
            if *wants {
                assert_eq!(classify(Stage::Auth, *code, text), Outcome::RelayRefused);
            }
        }
    }
}
