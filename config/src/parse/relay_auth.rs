//! The credential settings of a `[[relay]]`: `username` with its one password source
//! (`password_secret`, a Secret Service lookup, or `password_command`), read into an
//! [`Auth`], and `dangerous_plaintext_auth`.

use std::collections::BTreeMap;

use toml::de::DeValue;

use super::{Ctx, Table, article};
use crate::{Auth, Secret, TlsMode};

/// Most attributes a `password_secret` may have (`secret-tool` users write two or three).
const MAX_ATTRIBUTES: usize = 16;
/// Longest attribute name or value, in bytes.
const MAX_ATTRIBUTE_LEN: usize = 256;

const SECRET_HELP: &str = r#"write password_secret = { service = "smtp", username = "alice" }: the attributes of the keyring item, as `secret-tool store --label=... service smtp username alice` made it"#;

/// Reads `username`, `password_secret` and `password_command` into how to log in, and reports
/// a combination that is not one username with one password source. `who` names the relay in
/// messages; `name` is its name ("" when it has none).
pub(super) fn auth(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, who: &str, name: &str) -> Option<Auth> {
    let username = t.text(ctx, "username").map(|s| s.value.to_owned());
    let command = t.text(ctx, "password_command").map(|s| s.value.to_owned());
    let keyring = read_secret(ctx, t);
    check_sources(ctx, t, who, name);
    let secret = match (keyring, command) {
        (Some(attributes), None) => Secret::Keyring(attributes),
        (None, Some(command)) => Secret::Command(command),
        // Reported above (or a value was not valid, and reported where it was read).
        _ => return None,
    };
    Some(Auth {
        username: username?,
        secret,
    })
}

/// A `username` needs exactly one password source, and a password source needs a `username`.
fn check_sources(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, who: &str, name: &str) {
    let relay = if name.is_empty() { "relay" } else { name };
    let command = t.get("password_command");
    let secret = t.get("password_secret");
    let source = t
        .get("password_command")
        .or_else(|| t.get("password_secret"));
    match (t.get("username"), source) {
        (Some(e), None) => ctx.error(
            e.key_span.start,
            format!("{who} has a `username` but no `password_command` or `password_secret`"),
            format!(
                "add password_secret = {{ service = \"smtp\", username = \"...\" }} (looked up in the desktop keyring), or password_command = \"pass show smtp/{relay}\" (run with sh -c; the first line it prints is the password), or remove `username`"
            ),
        ),
        (None, Some(e)) => ctx.error(
            e.key_span.start,
            format!("{who} has a `{}` but no `username`", e.key),
            format!(
                "add username = \"...\" (the account name on the relay), or remove `{}`",
                e.key
            ),
        ),
        _ => {}
    }
    if let (Some(_), Some(e)) = (&command, &secret) {
        ctx.error(
            e.key_span.start,
            format!("{who} has both `password_command` and `password_secret`"),
            "keep one of them: the password comes from one place",
        );
    }
}

/// Reads `password_secret`: a table of string attributes, at least one.
fn read_secret(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> Option<BTreeMap<String, String>> {
    t.get("password_secret")?;
    let (table, span) = t.table(ctx, "password_secret")?;
    if table.is_empty() {
        ctx.error(
            span.start,
            "empty `password_secret`: it would match any item of the keyring",
            SECRET_HELP,
        );
        return None;
    }
    if table.len() > MAX_ATTRIBUTES {
        ctx.error(
            span.start,
            format!(
                "`password_secret` has {} attributes; at most {MAX_ATTRIBUTES} are allowed",
                table.len()
            ),
            SECRET_HELP,
        );
        return None;
    }
    let mut out = BTreeMap::new();
    let mut ok = true;
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (k, v) in entries {
        let key: &str = k.get_ref();
        let DeValue::String(value) = v.get_ref() else {
            let found = v.get_ref().type_str();
            ctx.error(
                v.span().start,
                format!(
                    "attribute `{key}` of `password_secret` must be a string, not {} {found}",
                    article(found)
                ),
                "put the value in double quotes: attributes are text",
            );
            ok = false;
            continue;
        };
        let value: &str = value.as_ref();
        for (what, text, at) in [
            ("name", key, k.span().start),
            ("value", value, v.span().start),
        ] {
            let problem = if text.trim().is_empty() {
                Some("is empty")
            } else if text.len() > MAX_ATTRIBUTE_LEN {
                Some("is longer than 256 bytes")
            } else if text.chars().any(char::is_control) {
                Some("contains control characters")
            } else {
                None
            };
            if let Some(problem) = problem {
                ctx.error(
                    at,
                    format!("an attribute {what} of `password_secret` {problem}"),
                    SECRET_HELP,
                );
                ok = false;
            }
        }
        out.insert(key.to_owned(), value.to_owned());
    }
    ok.then_some(out)
}

/// Reads `dangerous_plaintext_auth`; it only makes sense with `tls = "none"` and a `username`.
pub(super) fn plaintext_auth(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    who: &str,
    tls: Option<TlsMode>,
) -> bool {
    let Some((on, span)) = t.boolean(ctx, "dangerous_plaintext_auth") else {
        return false;
    };
    if !on {
        return false;
    }
    if let Some(mode @ (TlsMode::Starttls | TlsMode::Tls)) = tls {
        ctx.error(
            span.start,
            format!(
                "`dangerous_plaintext_auth` is only for tls = \"none\", and {who} has tls = \"{mode}\" (its password is already encrypted)"
            ),
            "remove dangerous_plaintext_auth",
        );
        return false;
    }
    if t.get("username").is_none() {
        ctx.error(
            span.start,
            format!("`dangerous_plaintext_auth` is set but {who} has no `username`: there is no password to send"),
            "remove dangerous_plaintext_auth",
        );
        return false;
    }
    true
}
