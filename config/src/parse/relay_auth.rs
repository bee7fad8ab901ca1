//! The credential settings of a `[[relay]]`: `username`, the mechanism (`auth`) and its one
//! secret source (`password_secret`, a Secret Service lookup, `password_command`, or
//! `[relay.oauth2]`), read into an [`Auth`], and `dangerous_plaintext_auth`.

use std::collections::BTreeMap;

use toml::de::DeValue;

use super::{Ctx, Table, article, choice, relay_oauth2};
use crate::{Auth, Mechanism, Secret, TlsMode};

/// Most attributes a `password_secret` may have (`secret-tool` users write two or three).
const MAX_ATTRIBUTES: usize = 16;
/// Longest attribute name or value, in bytes.
const MAX_ATTRIBUTE_LEN: usize = 256;

const SECRET_HELP: &str = r#"write password_secret = { service = "smtp", username = "alice" }: the attributes of the keyring item, as `secret-tool store --label=... service smtp username alice` made it"#;

const MECHANISM_HELP: &str = r#"write auth = "password" (AUTH PLAIN or LOGIN, the default), "xoauth2" (Gmail, Microsoft 365) or "oauthbearer" (RFC 7628)"#;

/// Reads `username`, `auth`, `password_secret`, `password_command` and `oauth2` into how to
/// log in, and reports a combination that is not one username with one secret source that
/// suits the mechanism. `who` names the relay in messages; `name` is its name ("" when it has
/// none).
pub(super) fn auth(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, who: &str, name: &str) -> Option<Auth> {
    let username = t.text(ctx, "username").map(|s| s.value.to_owned());
    let mechanism = mechanism(ctx, t);
    let command = t.text(ctx, "password_command").map(|s| s.value.to_owned());
    let keyring = read_secret(ctx, t);
    let oauth2 = relay_oauth2::oauth2(ctx, t, who);
    check_sources(ctx, t, who, name, mechanism);
    let secret = match (keyring, command, oauth2) {
        (Some(attributes), None, None) => Secret::Keyring(attributes),
        (None, Some(command), None) => Secret::Command(command),
        (None, None, Some(oauth2)) => Secret::OAuth2(oauth2),
        // Reported above (or a value was not valid, and reported where it was read).
        _ => return None,
    };
    let mechanism = mechanism?;
    if matches!(secret, Secret::OAuth2(_)) && !mechanism.is_bearer() {
        return None;
    }
    Some(Auth {
        username: username?,
        mechanism,
        secret,
    })
}

/// `auth`: the mechanism, [`Mechanism::Password`] when not given; `None` when not valid.
fn mechanism(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> Option<Mechanism> {
    if t.get("auth").is_none() {
        return Some(Mechanism::Password);
    }
    let s = t.string(ctx, "auth")?;
    match choice(
        ctx,
        &s,
        "auth mechanism",
        &["password", "xoauth2", "oauthbearer"],
        MECHANISM_HELP,
    )? {
        "password" => Some(Mechanism::Password),
        "xoauth2" => Some(Mechanism::Xoauth2),
        _ => Some(Mechanism::OAuthBearer),
    }
}

/// A `username` needs exactly one secret source, and a secret source needs a `username`; an
/// `oauth2` table needs a bearer mechanism, and a bearer mechanism needs a `username`.
fn check_sources(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    who: &str,
    name: &str,
    mechanism: Option<Mechanism>,
) {
    let relay = if name.is_empty() { "relay" } else { name };
    let mut sources: Vec<_> = ["password_command", "password_secret", "oauth2"]
        .into_iter()
        .filter_map(|key| t.get(key))
        .collect();
    sources.sort_by_key(|e| e.key_span.start);
    let bearer = mechanism.is_some_and(Mechanism::is_bearer);
    let unknown_mechanism = mechanism.is_none() && t.get("auth").is_some();
    match (t.get("username"), sources.first()) {
        // Reported where it was read: which sources it needs is not known.
        (Some(_), None) if unknown_mechanism => {}
        (Some(e), None) if bearer => ctx.error(
            e.key_span.start,
            format!("{who} has auth = \"{}\" but no token source", mechanism.unwrap_or_default()),
            format!(
                "add [relay.oauth2] with provider = \"google\" or \"microsoft\" and your client_id, then run `linkrelay login {relay}`; or password_command = \"oama access you@example.com\" (a helper that prints an access token)"
            ),
        ),
        (Some(e), None) => ctx.error(
            e.key_span.start,
            format!("{who} has a `username` but no `password_command` or `password_secret`"),
            format!(
                "add password_secret = {{ service = \"smtp\", username = \"...\" }} (looked up in the desktop keyring), or password_command = \"pass show smtp/{relay}\" (run with sh -c; the first line it prints is the password), or remove `username`"
            ),
        ),
        (None, Some(e)) => ctx.error(
            e.key_span.start,
            format!("{who} has {} but no `username`", describe_key(e.key)),
            format!(
                "add username = \"...\" (the account name on the relay), or remove `{}`",
                e.key
            ),
        ),
        (None, None) if bearer => {
            if let Some(e) = t.get("auth") {
                ctx.error(
                    e.key_span.start,
                    format!("{who} has auth = \"{}\" but no `username`", mechanism.unwrap_or_default()),
                    "add username = \"you@example.com\" (the mail account the token is for), and [relay.oauth2]",
                );
            }
        }
        _ => {}
    }
    if let [first, second, ..] = &sources[..] {
        let help = if second.key == "oauth2" || first.key == "oauth2" {
            "keep one of them: with [relay.oauth2] the tokens come from the provider"
        } else {
            "keep one of them: the password comes from one place"
        };
        ctx.error(
            second.key_span.start,
            format!(
                "{who} has both {} and {}",
                quote_key(first.key),
                quote_key(second.key)
            ),
            help,
        );
    }
    if let (Some(e), Some(Mechanism::Password)) = (t.get("oauth2"), mechanism) {
        ctx.error(
            e.key_span.start,
            format!("{who} has [relay.oauth2] but logs in with a password"),
            "add auth = \"xoauth2\" (Gmail, Microsoft 365) or auth = \"oauthbearer\" (RFC 7628)",
        );
    }
}

/// A secret source's key as the messages name it: "a `password_command`".
fn describe_key(key: &str) -> String {
    match key {
        "oauth2" => "[relay.oauth2]".to_owned(),
        other => format!("a `{other}`"),
    }
}

/// A secret source's key quoted: "`password_command`".
fn quote_key(key: &str) -> String {
    match key {
        "oauth2" => "[relay.oauth2]".to_owned(),
        other => format!("`{other}`"),
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
