//! Delivery status notification requests (RFC 3461) that come with a message: `RET` and
//! `ENVID` on `MAIL FROM`, `NOTIFY` and `ORCPT` on each `RCPT TO` (or sendmail's `-R`, `-V`
//! and `-N`). They are stored with the message ([`crate::Envelope::dsn`]) and passed on to a
//! relay that offers the DSN extension; linkrelay does not write notifications itself.
//!
//! Values are kept decoded (`ENVID` and the address of `ORCPT` as text); [`xtext`] encodes
//! them again for the wire. Pure: no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest `ENVID` accepted, in characters (RFC 3461 section 4.4).
pub const ENVID_MAX: usize = 100;
/// Longest `ORCPT` value accepted, in characters (RFC 3461 section 4.2).
pub const ORCPT_MAX: usize = 500;

/// The DSN requests of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dsn {
    /// `RET`: how much of the message a notification should return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// `ENVID`: the sender's own id for this message, decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// `NOTIFY` and `ORCPT` of the recipients that gave any, by address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<RecipientDsn>,
}

impl Dsn {
    /// True when nothing was asked for: such a message stores no `dsn` at all.
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none() && self.recipients.is_empty()
    }

    /// What recipient `addr` asked for, if anything (addresses compared without regard to
    /// case, as the envelope drops duplicates that way).
    pub fn recipient(&self, addr: &str) -> Option<&RecipientDsn> {
        self.recipients
            .iter()
            .find(|r| r.addr.eq_ignore_ascii_case(addr))
    }

    /// The `MAIL FROM` parameters to pass on to a relay that offers DSN; written out, e.g.
    /// `RET=HDRS ENVID=abc+2B1`.
    pub fn mail_params(&self) -> Vec<DsnParam> {
        let mut out = Vec::new();
        if let Some(ret) = self.ret {
            out.push(DsnParam::new("RET", ret.to_string()));
        }
        if let Some(envid) = &self.envid {
            out.push(DsnParam::new("ENVID", envid.clone()));
        }
        out
    }

    /// The `RCPT TO` parameters for recipient `addr` to pass on to a relay that offers DSN;
    /// written out, e.g. `NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.org`.
    pub fn rcpt_params(&self, addr: &str) -> Vec<DsnParam> {
        let Some(r) = self.recipient(addr) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(notify) = r.notify {
            out.push(DsnParam::new("NOTIFY", notify.to_string()));
        }
        if let Some(orcpt) = &r.orcpt {
            out.push(DsnParam::new(
                "ORCPT",
                format!("{};{}", orcpt.addr_type, orcpt.addr),
            ));
        }
        out
    }
}

/// One DSN parameter of a command: its keyword and its value, decoded. Written out
/// ([`fmt::Display`]) as `KEYWORD=xtext(value)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnParam {
    /// `RET`, `ENVID`, `NOTIFY` or `ORCPT`.
    pub keyword: &'static str,
    /// The value as text (xtext-encoded when written out).
    pub value: String,
}

impl DsnParam {
    fn new(keyword: &'static str, value: String) -> DsnParam {
        DsnParam { keyword, value }
    }
}

impl fmt::Display for DsnParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.keyword, xtext(&self.value))
    }
}

/// `RET=FULL` or `RET=HDRS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    /// Return the whole message.
    Full,
    /// Return the headers only.
    Hdrs,
}

impl Ret {
    /// Reads `FULL` or `HDRS` (any case).
    pub fn parse(value: &str) -> Option<Ret> {
        if value.eq_ignore_ascii_case("full") {
            Some(Ret::Full)
        } else if value.eq_ignore_ascii_case("hdrs") {
            Some(Ret::Hdrs)
        } else {
            None
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        })
    }
}

/// `NOTIFY`: when the sender wants to hear about a recipient. All three false is `NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Notify {
    /// `SUCCESS`: once delivered.
    pub success: bool,
    /// `FAILURE`: if delivery fails.
    pub failure: bool,
    /// `DELAY`: if delivery is delayed.
    pub delay: bool,
}

impl Notify {
    /// `NEVER`.
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// Reads `NEVER` or a comma-separated list of `SUCCESS`, `FAILURE` and `DELAY` (any case;
    /// each at most once; `NEVER` only alone).
    pub fn parse(value: &str) -> Result<Notify, String> {
        if value.eq_ignore_ascii_case("never") {
            return Ok(Notify::NEVER);
        }
        let mut out = Notify::NEVER;
        for word in value.split(',') {
            let slot = if word.eq_ignore_ascii_case("success") {
                &mut out.success
            } else if word.eq_ignore_ascii_case("failure") {
                &mut out.failure
            } else if word.eq_ignore_ascii_case("delay") {
                &mut out.delay
            } else if word.eq_ignore_ascii_case("never") {
                return Err("NEVER cannot be combined with other values".into());
            } else {
                return Err(format!(
                    "{word:?} is not one of NEVER, SUCCESS, FAILURE, DELAY"
                ));
            };
            if *slot {
                return Err(format!("{word} is given twice"));
            }
            *slot = true;
        }
        Ok(out)
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .into_iter()
        .filter_map(|(on, word)| on.then_some(word))
        .collect();
        if words.is_empty() {
            f.write_str("NEVER")
        } else {
            f.write_str(&words.join(","))
        }
    }
}

impl From<Notify> for String {
    fn from(n: Notify) -> String {
        n.to_string()
    }
}

impl TryFrom<String> for Notify {
    type Error = String;
    fn try_from(s: String) -> Result<Notify, String> {
        Notify::parse(&s)
    }
}

/// `ORCPT=addr-type;address`: the recipient as the sender first wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orcpt {
    /// The address type, e.g. `rfc822` or `utf-8`.
    pub addr_type: String,
    /// The address, decoded from xtext.
    pub addr: String,
}

impl Orcpt {
    /// Reads `addr-type;xtext`.
    pub fn parse(value: &str) -> Result<Orcpt, String> {
        if value.chars().count() > ORCPT_MAX {
            return Err(format!("longer than {ORCPT_MAX} characters"));
        }
        let (addr_type, addr) = value.split_once(';').ok_or("it is not addr-type;address")?;
        let atom = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
        if addr_type.is_empty() || !addr_type.chars().all(atom) {
            return Err(format!("{addr_type:?} is not an address type"));
        }
        Ok(Orcpt {
            addr_type: addr_type.to_owned(),
            addr: unxtext(addr)?,
        })
    }
}

/// What one recipient asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientDsn {
    /// The recipient's address, as in the envelope.
    pub addr: String,
    /// `NOTIFY`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// `ORCPT`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<Orcpt>,
}

/// Encodes `text` as xtext (RFC 3461 section 4): `+`, `=`, spaces and control characters
/// become `+HH`. Characters above ASCII stay as they are (SMTPUTF8 allows them).
pub fn xtext(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '+' || c == '=' || (c.is_ascii() && !('!'..='~').contains(&c)) {
            out.push_str(&format!("+{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes xtext: `+HH` (upper-case hex) is a byte; `=`, white space and control characters
/// are refused, and so is a `+HH` that is not text.
pub fn unxtext(xtext: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(xtext.len());
    let mut rest = xtext.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        match b {
            b'+' => {
                let hex = tail
                    .get(..2)
                    .filter(|h| h.iter().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')))
                    .ok_or("a + not followed by two upper-case hex digits")?;
                let text = std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                bytes.push(u8::from_str_radix(text, 16).map_err(|e| e.to_string())?);
                rest = &tail[2..];
            }
            b'=' => return Err("an = that is not encoded as +3D".into()),
            b if b < 0x21 || b == 0x7f => {
                return Err("white space or a control character".into());
            }
            b => {
                bytes.push(b);
                rest = tail;
            }
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| "it does not decode to UTF-8 text")?;
    if text.chars().any(char::is_control) {
        return Err("it decodes to a control character".into());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_round_trips_and_encodes_only_what_it_must() {
        for (plain, encoded) in [
            ("abc", "abc"),
            ("a+b=c", "a+2Bb+3Dc"),
            ("two words", "two+20words"),
            ("rené@example.org", "rené@example.org"),
        ] {
            assert_eq!(xtext(plain), encoded);
            assert_eq!(unxtext(encoded).unwrap(), plain);
        }
    }

    #[test]
    fn bad_xtext_is_refused_with_a_reason() {
        for bad in ["a+2", "a+2b", "a=b", "a b", "a\tb", "+0A", "+FF"] {
            assert!(unxtext(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn notify_reads_never_or_a_set_and_writes_it_back_in_order() {
        assert_eq!(Notify::parse("never").unwrap(), Notify::NEVER);
        let n = Notify::parse("delay,Success").unwrap();
        assert_eq!(n.to_string(), "SUCCESS,DELAY");
        for bad in [
            "",
            "NEVER,SUCCESS",
            "SUCCESS,SUCCESS",
            "SOMETIMES",
            "SUCCESS,",
        ] {
            assert!(Notify::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn orcpt_needs_a_type_and_decodes_its_address() {
        let o = Orcpt::parse("rfc822;bob+2Bmail@example.org").unwrap();
        assert_eq!(o.addr_type, "rfc822");
        assert_eq!(o.addr, "bob+mail@example.org");
        for bad in [
            "bob@example.org",
            ";bob@example.org",
            "rfc 822;x@y",
            "rfc822;a=b",
        ] {
            assert!(Orcpt::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Orcpt::parse(&format!("rfc822;{}", "a".repeat(ORCPT_MAX))).is_err());
    }

    #[test]
    fn parameters_for_a_relay_carry_what_was_asked() {
        let dsn = Dsn {
            ret: Some(Ret::Hdrs),
            envid: Some("id=1 x".into()),
            recipients: vec![RecipientDsn {
                addr: "Bob@Example.org".into(),
                notify: Some(Notify::parse("SUCCESS,FAILURE").unwrap()),
                orcpt: Some(Orcpt::parse("rfc822;bob+2Bx@example.org").unwrap()),
            }],
        };
        let shown = |params: Vec<DsnParam>| -> Vec<String> {
            params.iter().map(ToString::to_string).collect()
        };
        assert_eq!(shown(dsn.mail_params()), ["RET=HDRS", "ENVID=id+3D1+20x"]);
        assert_eq!(
            shown(dsn.rcpt_params("bob@example.org")),
            ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob+2Bx@example.org"]
        );
        assert_eq!(
            dsn.mail_params()[1].value,
            "id=1 x",
            "the value is kept decoded"
        );
        assert!(dsn.rcpt_params("carol@example.org").is_empty());
    }

    #[test]
    fn a_state_written_before_dsn_existed_still_loads_and_a_state_without_dsn_writes_none() {
        let old = r#"{"version":1,"id":"1.2.3.4","from":"a@b.example",
            "recipients":[{"addr":"c@d.example","status":"pending"}],"size":10,"queued_at":1}"#;
        let state: crate::MessageState = serde_json::from_str(old).unwrap();
        assert_eq!(state.dsn, None);
        assert!(!serde_json::to_string(&state).unwrap().contains("dsn"));
        let env = crate::Envelope {
            from: "a@b.example".into(),
            recipients: vec!["c@d.example".into()],
            dsn: Some(Dsn {
                ret: Some(Ret::Hdrs),
                ..Dsn::default()
            }),
        };
        let state = crate::MessageState::new("1.2.3.4", &env, 10, 1);
        let json = serde_json::to_string(&state).unwrap();
        let back: crate::MessageState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.envelope(), env);
    }

    #[test]
    fn stored_form_is_plain_json_and_reads_back() {
        let dsn = Dsn {
            ret: Some(Ret::Full),
            envid: None,
            recipients: vec![RecipientDsn {
                addr: "a@b.example".into(),
                notify: Some(Notify::NEVER),
                orcpt: None,
            }],
        };
        let json = serde_json::to_string(&dsn).unwrap();
        assert_eq!(
            json,
            r#"{"ret":"full","recipients":[{"addr":"a@b.example","notify":"NEVER"}]}"#
        );
        assert_eq!(serde_json::from_str::<Dsn>(&json).unwrap(), dsn);
    }
}
