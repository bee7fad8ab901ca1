//! `[relay.oauth2]`: the provider that issues a relay's access tokens, read into an
//! [`OAuth2`]. A `provider` preset fills in the endpoints and scopes; the keys given override
//! it. Every URL must be `https`, or `http` to this machine (a test provider on loopback):
//! tokens never cross the network in clear.

use std::path::PathBuf;

use super::{Ctx, OAUTH2, Str, Table, choice, strings_of};
use crate::{LoginFlow, OAuth2, Provider, TokenStore};

/// A provider's endpoints and scopes.
struct Preset {
    authorization_url: String,
    token_url: String,
    device_url: String,
    revocation_url: Option<&'static str>,
    scopes: &'static [&'static str],
}

fn preset(provider: Provider, tenant: &str) -> Preset {
    match provider {
        Provider::Google => Preset {
            authorization_url: "https://accounts.google.com/o/oauth2/v2/auth".into(),
            token_url: "https://oauth2.googleapis.com/token".into(),
            device_url: "https://oauth2.googleapis.com/device/code".into(),
            revocation_url: Some("https://oauth2.googleapis.com/revoke"),
            scopes: &["https://mail.google.com/"],
        },
        Provider::Microsoft => {
            let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
            Preset {
                authorization_url: format!("{base}/authorize"),
                token_url: format!("{base}/token"),
                device_url: format!("{base}/devicecode"),
                revocation_url: None,
                scopes: &["https://outlook.office.com/SMTP.Send", "offline_access"],
            }
        }
    }
}

const PROVIDER_HELP: &str = r#"write provider = "google" (Gmail, Google Workspace) or "microsoft" (Microsoft 365, Outlook.com), or leave it out and give authorization_url, token_url and device_url"#;

const CLIENT_ID_HELP: &str = "register linkrelay with the provider as a desktop (installed) application and write its client id here, e.g. client_id = \"1234-abc.apps.googleusercontent.com\" (docs/oauth2.md shows how)";

/// Reads the `oauth2` table of a relay; `who` names the relay in messages.
pub(super) fn oauth2(ctx: &mut Ctx<'_>, relay: &Table<'_, '_>, who: &str) -> Option<OAuth2> {
    let (table, span) = relay.table(ctx, "oauth2")?;
    let t = Table::new(ctx, table, span, &OAUTH2);
    let mut ok = true;

    let provider = t.string(ctx, "provider").and_then(|s| {
        let word = choice(
            ctx,
            &s,
            "OAuth2 provider",
            &["google", "microsoft"],
            PROVIDER_HELP,
        );
        ok &= word.is_some();
        match word? {
            "google" => Some(Provider::Google),
            _ => Some(Provider::Microsoft),
        }
    });
    let tenant = tenant(ctx, &t, provider, &mut ok);
    let preset = provider.map(|p| preset(p, &tenant));

    let mut url = |name: &str, preset_value: Option<String>| match t.text(ctx, name) {
        Some(s) => {
            ok &= check_url(ctx, &s, name);
            Some(s.value.to_owned())
        }
        None => {
            ok &= t.get(name).is_none();
            preset_value
        }
    };
    let authorization_url = url(
        "authorization_url",
        preset.as_ref().map(|p| p.authorization_url.clone()),
    );
    let token_url = url("token_url", preset.as_ref().map(|p| p.token_url.clone()));
    let device_url = url("device_url", preset.as_ref().map(|p| p.device_url.clone()));
    let revocation_url = url(
        "revocation_url",
        preset
            .as_ref()
            .and_then(|p| p.revocation_url.map(str::to_owned)),
    );

    let unknown_provider = provider.is_none() && t.get("provider").is_some();
    if unknown_provider {
        // Reported where it was read; the endpoints it would have given are not missing.
    } else if token_url.is_none() && t.get("token_url").is_none() {
        ok = false;
        ctx.error(
            t.span.start,
            format!("the `oauth2` of {who} has no `token_url` and no `provider`"),
            format!("add a `provider`, or the provider's endpoints: {PROVIDER_HELP}"),
        );
    } else if authorization_url.is_none() && device_url.is_none() {
        ok = false;
        ctx.error(
            t.span.start,
            format!(
                "the `oauth2` of {who} has neither `authorization_url` nor `device_url`: there is no way to log in"
            ),
            r#"add authorization_url = "https://..." (login in a browser) or device_url = "https://..." (login with a code), from the provider's documentation"#,
        );
    }

    let scopes = scopes(ctx, &t, &mut ok).unwrap_or_else(|| {
        preset
            .as_ref()
            .map(|p| p.scopes.iter().map(|s| (*s).to_owned()).collect())
            .unwrap_or_default()
    });

    let client_id = match t.text(ctx, "client_id") {
        Some(s) if s.value.contains(char::is_whitespace) => {
            ctx.error(
                s.span.start,
                "`client_id` contains white space",
                CLIENT_ID_HELP,
            );
            None
        }
        Some(s) => Some(s.value.to_owned()),
        None => {
            if t.get("client_id").is_none() {
                ctx.error(
                    t.span.start,
                    format!("the `oauth2` of {who} has no `client_id`"),
                    CLIENT_ID_HELP,
                );
            }
            None
        }
    };
    let client_secret_command = t
        .text(ctx, "client_secret_command")
        .map(|s| s.value.to_owned());

    let default_login = match (provider, &device_url) {
        (Some(p), _) => p.default_login(),
        (None, Some(_)) => LoginFlow::Device,
        (None, None) => LoginFlow::Browser,
    };
    let login = login(
        ctx,
        &t,
        default_login,
        authorization_url.is_some(),
        device_url.is_some(),
        &mut ok,
    );

    let token_store = match t.text(ctx, "token_file") {
        Some(s) => {
            let path = PathBuf::from(s.value);
            TokenStore::File(match ctx.origin.parent() {
                Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
                _ => path,
            })
        }
        None => TokenStore::Keyring,
    };

    let redirect_host = match provider {
        Some(Provider::Microsoft) => "localhost",
        _ => "127.0.0.1",
    };
    if !ok {
        return None;
    }
    Some(OAuth2 {
        provider,
        authorization_url,
        token_url: token_url?,
        device_url,
        revocation_url,
        scopes,
        client_id: client_id?,
        client_secret_command,
        login,
        redirect_host,
        token_store,
    })
}

/// `tenant`: only for Microsoft; a tenant id, domain, or `common`, `organizations`,
/// `consumers`.
fn tenant(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    provider: Option<Provider>,
    ok: &mut bool,
) -> String {
    let Some(s) = t.text(ctx, "tenant") else {
        *ok &= t.get("tenant").is_none();
        return "common".to_owned();
    };
    if provider != Some(Provider::Microsoft) {
        *ok = false;
        ctx.error(
            s.span.start,
            "`tenant` is only used with provider = \"microsoft\"",
            "remove tenant, or write provider = \"microsoft\"",
        );
    } else if !s
        .value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        *ok = false;
        ctx.error(
            s.span.start,
            format!("`tenant` \"{}\" is not a tenant", s.value.escape_default()),
            r#"write the directory (tenant) id or domain of your organisation, e.g. tenant = "contoso.onmicrosoft.com", or leave it out for "common""#,
        );
    }
    s.value.to_owned()
}

/// `scopes`: an array of scope names, none empty or with white space. `None` when not given
/// (or not valid, which is reported).
fn scopes(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, ok: &mut bool) -> Option<Vec<String>> {
    let e = t.get("scopes")?;
    let Some(items) = strings_of(ctx, &e, || format!("write {}", t.example("scopes"))) else {
        *ok = false;
        return None;
    };
    let mut out = Vec::new();
    for s in &items {
        if s.value.is_empty() || s.value.contains(char::is_whitespace) {
            *ok = false;
            ctx.error(
                s.span.start,
                format!("scope \"{}\" is empty or has white space", s.value.escape_default()),
                "write each scope as its own string, e.g. scopes = [\"https://outlook.office.com/SMTP.Send\", \"offline_access\"]",
            );
        }
        out.push(s.value.to_owned());
    }
    Some(out)
}

/// `login`: "device" or "browser", each needing its endpoint.
fn login(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    default: LoginFlow,
    has_authorization: bool,
    has_device: bool,
    ok: &mut bool,
) -> LoginFlow {
    let Some(s) = t.string(ctx, "login") else {
        *ok &= t.get("login").is_none();
        return default;
    };
    let help = r#"write login = "device" (a code to type in any browser) or "browser" (this machine's browser)"#;
    let flow = match choice(ctx, &s, "login", &["device", "browser"], help) {
        Some("device") => LoginFlow::Device,
        Some(_) => LoginFlow::Browser,
        None => {
            *ok = false;
            return default;
        }
    };
    let missing = match flow {
        LoginFlow::Device if !has_device => Some("device_url"),
        LoginFlow::Browser if !has_authorization => Some("authorization_url"),
        _ => None,
    };
    if let Some(key) = missing {
        *ok = false;
        ctx.error(
            s.span.start,
            format!("login = \"{}\" needs a `{key}`", flow.as_str()),
            format!("add {}, or choose the other login", t.example(key)),
        );
    }
    flow
}

/// Whether `s` is an `https` URL, or an `http` one to this machine; reports it otherwise.
fn check_url(ctx: &mut Ctx<'_>, s: &Str<'_>, name: &str) -> bool {
    let problem = match url_host(s.value) {
        None => Some(format!(
            "`{name}` \"{}\" is not an http(s) URL",
            s.value.escape_default()
        )),
        Some(("https", _)) => None,
        Some(("http", host)) if is_loopback(host) => None,
        Some(_) => Some(format!(
            "`{name}` \"{}\" is not https: tokens would cross the network in clear",
            s.value.escape_default()
        )),
    };
    match problem {
        None => true,
        Some(message) => {
            ctx.error(
                s.span.start,
                message,
                "write the provider's https:// URL (http:// only to this machine)",
            );
            false
        }
    }
}

/// The scheme (lowercased) and host of an `http(s)://host[:port][/...]` URL.
fn url_host(url: &str) -> Option<(&'static str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => "https",
        "http" => "http",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains('@') || authority.chars().any(char::is_whitespace) {
        return None;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then_some((scheme, host))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::url_host;

    #[test]
    fn url_hosts_are_read_from_the_authority() {
        assert_eq!(
            url_host("https://a.example/x"),
            Some(("https", "a.example"))
        );
        assert_eq!(
            url_host("HTTP://127.0.0.1:8080"),
            Some(("http", "127.0.0.1"))
        );
        assert_eq!(url_host("http://[::1]:9/t?q"), Some(("http", "::1")));
        assert_eq!(url_host("http://user@host/"), None);
        assert_eq!(url_host("ftp://host/"), None);
        assert_eq!(url_host("https://"), None);
        assert_eq!(url_host("host/path"), None);
    }
}
