//! `linkrelay login RELAY` and `linkrelay logout RELAY`: the CLI talks to the relay's OAuth2
//! provider itself (the agent needs no part in a login, and the user is here, at a terminal),
//! keeps the refresh token where the config says (the keyring by default), then asks a
//! running agent to flush, so that mail held for want of a login goes at once. The agent
//! reads the stored token at each session, so a logout needs no word to it.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use linkrelay_config::{Config, LoginFlow, OAuth2, Relay, Secret};
use linkrelay_dbus::agent::AgentProxy;
use linkrelay_dbus::notifications::NotificationsProxy;
use linkrelay_oauth::{Provider, TokenStore, Tokens};

/// How long a browser login may take.
const BROWSER_LIMIT: Duration = Duration::from_secs(5 * 60);

/// The relay named `name` in the config at `path`, with its OAuth2 settings.
fn oauth_relay(path: &Path, name: &str) -> anyhow::Result<(Relay, OAuth2)> {
    let config = Config::load(path)?;
    let Some(relay) = config.relay(name) else {
        let known: Vec<&str> = config.relays.iter().map(|r| r.name.as_str()).collect();
        bail!(
            "no relay named {name:?} in {} (relays: {})",
            path.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    };
    let Some(Secret::OAuth2(settings)) = relay.auth.as_ref().map(|a| &a.secret) else {
        bail!(
            "relay {name} does not log in with OAuth2: give it auth = \"xoauth2\" and a [relay.oauth2] table (docs/oauth2.md)"
        );
    };
    Ok((relay.clone(), settings.clone()))
}

/// `linkrelay login`: logs in with `flow` (default: the relay's), keeps the refresh token,
/// and wakes the agent.
pub async fn login(
    path: &Path,
    name: &str,
    flow: Option<LoginFlow>,
    system: bool,
) -> anyhow::Result<()> {
    let (relay, settings) = oauth_relay(path, name)?;
    let store = TokenStore::for_relay(&relay).context("relay without OAuth2")?;
    let provider = Provider::new(name, &settings).await?;
    let tokens = match flow.unwrap_or(provider.default_login()) {
        LoginFlow::Device => device(&provider, name).await?,
        LoginFlow::Browser => browser(&provider).await?,
    };
    let Some(refresh) = tokens.refresh else {
        bail!(
            "the provider gave an access token but no refresh token, so the agent could not renew it: add \"offline_access\" to `scopes` (Microsoft and most providers want it) and log in again"
        );
    };
    store.save(&refresh).await?;
    println!(
        "logged in to relay {name}; the refresh token is in {}",
        store.describe()
    );
    wake_agent(system).await;
    Ok(())
}

/// The device grant: show the code, here and as a desktop notification, and wait.
async fn device(provider: &Provider, name: &str) -> anyhow::Result<Tokens> {
    let login = provider.start_device_login().await?;
    let minutes = login.expires_in().as_secs().div_ceil(60);
    let text = format!(
        "To let linkrelay send mail through relay {name}, open {} and enter the code {} (within {minutes} minutes).",
        login.verification_uri(),
        login.user_code()
    );
    println!("{text}");
    if let Some(complete) = login.verification_uri_complete() {
        println!("Or open {complete}");
    }
    println!("Waiting for the login...");
    notify(&format!("Log in to relay {name}"), &text).await;
    Ok(provider.finish_device_login(&login).await?)
}

/// The browser grant: open the login page with xdg-open (or say where it is), and wait for
/// the browser to come back.
async fn browser(provider: &Provider) -> anyhow::Result<Tokens> {
    let login = provider.start_browser_login().await?;
    println!("Opening the login page in your browser. If it does not open, open this address:");
    println!("{}", login.url());
    let opened = tokio::process::Command::new("xdg-open")
        .arg(login.url())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !matches!(opened, Ok(s) if s.success()) {
        println!("(xdg-open could not open a browser; open the address above yourself)");
    }
    println!(
        "Waiting for the browser to come back to {}...",
        login.redirect_uri()
    );
    Ok(provider.finish_browser_login(login, BROWSER_LIMIT).await?)
}

/// A desktop notification, if the session has a notification service; nothing otherwise.
async fn notify(summary: &str, body: &str) {
    let Ok(conn) = zbus::Connection::session().await else {
        return;
    };
    let Ok(proxy) = NotificationsProxy::new(&conn).await else {
        return;
    };
    let sent = proxy.notify(
        "linkrelay",
        0,
        "mail-send",
        summary,
        body,
        &[],
        HashMap::new(),
        -1,
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), sent).await;
}

/// Asks a running agent to flush now: mail held for want of this login goes at once. An
/// agent that is not running will find the token when it starts.
async fn wake_agent(system: bool) {
    let Ok(Ok(conn)) = crate::connect_with(system, false).await else {
        println!("linkrelayd is not running; it will use the login when it starts");
        return;
    };
    let flushed = async { AgentProxy::new(&conn).await?.flush("", false).await };
    match flushed.await {
        Ok(_) => println!("linkrelayd is sending the mail that waited for the login"),
        Err(e) => println!("linkrelayd did not take the flush ({e}); run `linkrelay flush`"),
    }
}

/// `linkrelay logout`: revokes the refresh token at the provider when it can, and forgets it.
pub async fn logout(path: &Path, name: &str) -> anyhow::Result<()> {
    let (relay, settings) = oauth_relay(path, name)?;
    let store = TokenStore::for_relay(&relay).context("relay without OAuth2")?;
    let Some(token) = store.load().await? else {
        println!(
            "relay {name} was not logged in (nothing in {})",
            store.describe()
        );
        return Ok(());
    };
    // Forget first: a provider that cannot be reached must not keep the token here.
    store.forget().await?;
    println!(
        "forgot the refresh token of relay {name} ({})",
        store.describe()
    );
    match Provider::new(name, &settings).await {
        Ok(provider) => match provider.revoke(&token).await {
            Ok(true) => println!("and revoked it at the provider"),
            Ok(false) => println!(
                "the provider has no revocation endpoint: to cut linkrelay off for good, remove its access in your account's security settings"
            ),
            Err(e) => println!("it could not be revoked at the provider: {e}"),
        },
        Err(e) => println!("it could not be revoked at the provider: {e}"),
    }
    Ok(())
}
